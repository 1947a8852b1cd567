"""`serve run emoverse.serving.app:build_app model=RUN` (or `emoverse serve RUN`)

The Ray Serve layer, kept thin: two deployments over the Ray-free modules.
- `Gateway`, the FastAPI ingress: validation, the media stage's clip processing and the
  prompt (`emoverse.serving.api` / `requests`) on CPU replicas.
- `ModelServer`: generation with dynamic batching (`@serve.batch`, batches are split by
  model id; streams batch with each other, decoded step by step) and model
  multiplexing (`serve.multiplexed`: a run's stages and configured adapters over one base
  model per replica, LRU-evicted), autoscaled on ongoing requests.
Both refuse work beyond `max_queued_requests` (503) instead of queueing without bound.
`RayTelemetry` records the API's measurements as Ray metrics (Prometheus).
"""

import asyncio
import logging
from typing import AsyncIterator

from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from emoverse.serving.api import create_app
from emoverse.serving.catalog import build_catalog
from emoverse.serving.config import ServeArgs
from emoverse.serving.model_pool import Delta, Generation, Job, ModelPool
from emoverse.serving.errors import Overloaded
from emoverse.serving.requests import Service
from emoverse.serving.telemetry import BATCH_BUCKETS, MS_BUCKETS

APP_NAME = "emoverse"
logger = logging.getLogger(__name__)


class RayTelemetry:
    """`emoverse.serving.telemetry`'s measurements as Ray metrics (one set per process)."""

    def __init__(self):
        from ray.util.metrics import Counter, Histogram

        def histogram(name, what, tags, buckets=MS_BUCKETS):
            return Histogram(name, description=what, boundaries=buckets, tag_keys=tags)

        self._requests = Counter("emoverse_requests", description="requests answered",
                                 tag_keys=("route", "task", "model", "status"))
        self._request_ms = histogram("emoverse_request_ms", "request latency at the gateway",
                                     ("route", "status"))
        self._media_ms = histogram("emoverse_media_ms", "clip decode, sampling, faces, crops",
                                   ("task",))
        self._queue_ms = histogram("emoverse_queue_ms", "waiting for a model replica",
                                   ("model",))
        self._generate_ms = histogram("emoverse_generate_ms", "the batch's generation",
                                      ("model",))
        self._first_token_ms = histogram("emoverse_first_token_ms", "streamed chats: time "
                                         "to the first token", ("model",))
        self._batch_size = histogram("emoverse_batch_size", "requests per generation batch",
                                     ("model",), BATCH_BUCKETS)
        self._parse_failures = Counter("emoverse_parse_failures", description="answers that "
                                       "did not parse", tag_keys=("task", "model"))
        self._clips = Counter("emoverse_clips", description="clips analysed, by whether a "
                              "face was found", tag_keys=("task", "face_found"))

    def request(self, route: str, task: str, model: str, status: int, ms: float) -> None:
        self._requests.inc(1, {"route": route, "task": task, "model": model,
                               "status": str(status)})
        self._request_ms.observe(ms, {"route": route, "status": str(status)})

    def answered(self, task: str, model: str, media_ms: float, queue_ms: float,
                 generate_ms: float, face_found: bool, parsed: bool | None) -> None:
        self._media_ms.observe(media_ms, {"task": task})
        self._queue_ms.observe(queue_ms, {"model": model})
        self._generate_ms.observe(generate_ms, {"model": model})
        self._clips.inc(1, {"task": task, "face_found": str(face_found).lower()})
        if parsed is False:
            self._parse_failures.inc(1, {"task": task, "model": model})

    def first_token(self, model: str, ms: float) -> None:
        self._first_token_ms.observe(ms, {"model": model})

    def batch(self, model: str, size: int) -> None:
        self._batch_size.observe(size, {"model": model})


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
        self.telemetry = RayTelemetry()
        for batched in (self.generate_batch, self.stream_batch):
            batched.set_max_batch_size(args.batching.max_batch_size)
            batched.set_batch_wait_timeout_s(args.batching.batch_wait_timeout_s)
        # One generation at a time: a paused stream holds the model (ModelPool.stream)
        # while the loop runs, and a whole batch must not switch adapters under it.
        self._generating = asyncio.Lock()
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
        async with self._generating:
            self.telemetry.batch(model_id, 1)
            return self.models.generate(model_id, [job])[0]

    # Generation blocks the replica's event loop on purpose: in a thread it would hold
    # the GIL against the loop taking requests in, and batches would stay small.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate_batch(self, jobs: list[Job]) -> list[Generation]:
        model_id = serve.get_multiplexed_model_id()
        async with self._generating:
            self.telemetry.batch(model_id, len(jobs))
            return self.models.generate(model_id, jobs)

    async def generate_stream(self, job: Job) -> AsyncIterator[Delta]:
        """`generate`, streamed: the request's text as it is decoded."""
        model_id = serve.get_multiplexed_model_id()
        await self.model(model_id)
        if self.batching:
            deltas = self.stream_batch(job)
        else:
            deltas = self._stream_alone(model_id, job)
        first = True
        async for delta in deltas:
            # the first delta opens the client's stream; later ones without text (a token
            # that is half a character, or none) would only cost a message each
            if first or delta.text or delta.done is not None:
                yield delta
            first = False

    async def _stream_alone(self, model_id: str, job: Job) -> AsyncIterator[Delta]:
        async with self._generating:
            self.telemetry.batch(model_id, 1)
            async for step in self.models.stream(model_id, [job]):
                if step[0] is not None:
                    yield step[0]

    # Streams batch with each other, decoded step by step (ModelPool.stream: each step
    # blocks the loop, and the loop sends between steps).
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def stream_batch(self, jobs: list[Job]) -> AsyncIterator[list]:
        model_id = serve.get_multiplexed_model_id()
        async with self._generating:
            self.telemetry.batch(model_id, len(jobs))
            async for step in self.models.stream(model_id, jobs):
                # a row that is done ends its caller's iteration
                yield [StopIteration if delta is None else delta for delta in step]

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

    async def stream(self, model_id: str, job: Job) -> AsyncIterator[Delta]:
        deltas = self.handle.options(multiplexed_model_id=model_id, stream=True
                                     ).generate_stream.remote(job)
        try:
            async for delta in deltas:
                yield delta
        except BackPressureError as exc:
            raise Overloaded("model deployment queue full") from exc

    async def status(self) -> dict:
        return await self.handle.status.remote()


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(self, model_server: DeploymentHandle, args: ServeArgs):
        self.service = Service.create(args, HandleBackend(model_server), RayTelemetry())
        logger.info(self.service.keys.describe())

    def __serve_build_asgi_app__(self):
        return create_app(self.service)


def build_app(args: ServeArgs) -> Application:
    """The typed application builder (`import_path: emoverse.serving.app:build_app`)."""
    build_catalog(args)  # a missing model or unknown adapter fails here, before deploying
    model = ModelServer.options(name="ModelServer", **args.model_server.options()).bind(args)
    return Gateway.options(name="Gateway", **args.gateway.options()).bind(model, args)


def run_app(args: ServeArgs, host: str = "127.0.0.1", port: int = 8000,
            blocking: bool = False, metrics_port: int | None = None,
            on_ready=None) -> None:
    """Start Serve's HTTP proxy on host:port and run the application on it. On a Ray of
    its own, the model deployment's autoscaling is sized to this machine and the metrics
    are exported on `metrics_port` (Ray picks one when None); `on_ready(url, metrics_url)`
    is called once the application answers."""
    import ray

    from emoverse.distributed.session import ensure_ray, joins_cluster
    from emoverse.serving.config import sized_for_local

    ensure_ray(metrics_export_port=metrics_port)
    if not joins_cluster():
        resources = ray.cluster_resources()
        args, change = sized_for_local(args, resources.get("CPU", 0), resources.get("GPU", 0))
        if change:
            logger.warning(f"sized for this machine: {change}")
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    if on_ready is not None:
        node = next(n for n in ray.nodes() if n["Alive"])
        on_ready(f"http://{host}:{port}/",
                 f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics")
    if blocking:
        _wait_forever()


def _wait_forever() -> None:
    import time

    while True:  # Serve runs in its actors; Ctrl-C / SIGTERM ends the driver
        time.sleep(3600)
