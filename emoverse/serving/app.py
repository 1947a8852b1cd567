"""`serve run emoverse.serving.app:build_app model=RUN` (or `emoverse serve RUN`)

The Ray Serve layer, kept thin: two deployments over the Ray-free modules.
- `Gateway`, the FastAPI ingress: validation, the media stage's clip processing and the
  prompt (`emoverse.serving.api` / `requests`) on CPU replicas.
- `ModelServer`: generation with dynamic batching (`@serve.batch`, batches are split by
  model id) and model multiplexing (`serve.multiplexed`: a run's stages and configured
  adapters over one base model per replica, LRU-evicted), autoscaled on ongoing requests.
Both refuse work beyond `max_queued_requests` (503) instead of queueing without bound.
"""

import asyncio

from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from emoverse.serving.api import create_app
from emoverse.serving.catalog import build_catalog
from emoverse.serving.config import ServeArgs
from emoverse.serving.model_pool import Generation, Job, ModelPool
from emoverse.serving.errors import Overloaded
from emoverse.serving.requests import Service

APP_NAME = "emoverse"


class LoadedModel:
    """What the multiplexer caches per model id; evicting it unloads the adapter."""

    def __init__(self, models: ModelPool, model_id: str):
        self.models, self.model_id = models, model_id
        self._released = False

    def __del__(self):
        # Serve calls this on LRU eviction and the garbage collector again later.
        if not self._released:
            self._released = True
            self.models.unload(self.model_id)


@serve.deployment
class ModelServer:
    def __init__(self, args: ServeArgs):
        self.models = ModelPool(build_catalog(args), args.trust_remote_code,
                                args.model_server.torch_threads)
        self.batching = args.batching.enabled
        self.generate_batch.set_max_batch_size(args.batching.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(args.batching.batch_wait_timeout_s)
        models = self.models

        async def load(model_id: str) -> LoadedModel:
            await asyncio.to_thread(models.load, model_id)
            return LoadedModel(models, model_id)

        # Built per replica so the LRU size comes from the config.
        self.model = serve.multiplexed(
            max_num_models_per_replica=args.model_server.max_models_per_replica)(load)

    async def generate(self, job: Job) -> Generation:
        model_id = serve.get_multiplexed_model_id()
        await self.model(model_id)
        if self.batching:
            return await self.generate_batch(job)
        return self.models.generate(model_id, [job])[0]

    # Generation blocks the replica's event loop on purpose: in a thread it would hold
    # the GIL against the loop taking requests in, and batches would stay small.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate_batch(self, jobs: list[Job]) -> list[Generation]:
        return self.models.generate(serve.get_multiplexed_model_id(), jobs)

    async def status(self) -> dict:
        return {"loaded": self.models.loaded, "batching": self.batching}


class HandleBackend:
    """The gateway's `Backend`: the model deployment behind its handle."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def generate(self, model_id: str, job: Job) -> Generation:
        try:
            return await self.handle.options(multiplexed_model_id=model_id).generate.remote(job)
        except BackPressureError as exc:
            raise Overloaded("model deployment queue full") from exc

    async def status(self) -> dict:
        return await self.handle.status.remote()


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(self, model_server: DeploymentHandle, args: ServeArgs):
        self.service = Service.create(args, HandleBackend(model_server))

    def __serve_build_asgi_app__(self):
        return create_app(self.service)


def build_app(args: ServeArgs) -> Application:
    """The typed application builder (`import_path: emoverse.serving.app:build_app`)."""
    build_catalog(args)  # a missing model or unknown adapter fails here, before deploying
    model = ModelServer.options(name="ModelServer", **args.model_server.options()).bind(args)
    return Gateway.options(name="Gateway", **args.gateway.options()).bind(model, args)


def run_app(args: ServeArgs, host: str = "127.0.0.1", port: int = 8000,
            blocking: bool = False) -> None:
    """Start Serve's HTTP proxy on host:port and run the application on it."""
    from emoverse.distributed.session import ensure_ray

    ensure_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=blocking)
