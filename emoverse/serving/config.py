"""Typed arguments of the serving application, and the Serve config file that carries them.

`ServeArgs` is the pydantic model of the app builder (`emoverse.serving.app:build_app`):
`serve deploy`, a RayService and `emoverse serve run` all validate the same fields.
`serve_config` writes the multi-application Serve config (what `emoverse serve build`
prints); `load_serve_config` reads one back and validates both Serve's schema and our
arguments, so a manifest embedding it can be checked in tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from emoverse.config_file import Strict, apply_key_values, read_mapping, validated
from emoverse.recipe import MediaConfig
from emoverse.tasks import TASK_NAMES, get_task

IMPORT_PATH = "emoverse.serving.app:build_app"
# Each task's answer budget (`Task.answer_budget`); a trained model stops at its
# end-of-turn token long before it.
DEFAULT_BUDGETS = {name: get_task(name).answer_budget for name in TASK_NAMES}


class Autoscaling(Strict):
    """Serve's autoscaling_config: replicas follow the ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = 8.0
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"autoscaling: max_replicas {self.max_replicas} is below "
                             f"min_replicas {self.min_replicas}")
        return self


class DeploymentSpec(Strict):
    """Replicas, resources and backpressure of one deployment."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    num_replicas: PositiveInt = 1  # ignored when autoscaling is set
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: PositiveInt = 64
    # Requests waiting at each caller beyond this get 503 instead of an unbounded queue.
    max_queued_requests: int = Field(256, ge=-1)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of `Deployment.options`."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.autoscaling:
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class ModelServerSpec(DeploymentSpec):
    autoscaling: Autoscaling | None = Autoscaling()
    max_ongoing_requests: PositiveInt = 32
    max_queued_requests: int = Field(128, ge=-1)
    max_models_per_replica: PositiveInt = 3  # LRU over stages and adapters per replica
    torch_threads: PositiveInt = 1


class Batching(Strict):
    """Serve's dynamic batching of generation calls (`@serve.batch`)."""

    enabled: bool = True
    max_batch_size: PositiveInt = 16
    batch_wait_timeout_s: float = Field(0.01, ge=0)


class AdapterSpec(Strict):
    """A LoRA adapter served under its own model id (e.g. one per tenant)."""

    path: str  # a peft adapter directory, or a stage checkpoint holding `adapter/`
    base: str | None = None  # the served model id it was trained on; None = the last stage


class Limits(Strict):
    max_upload_mb: PositiveFloat = 64.0
    max_video_seconds: PositiveFloat = 300.0  # of the analysed span
    max_video_frames: PositiveInt = 18000  # of the whole file (decoder index and seeks)
    # Prompt + video tokens + answer budget; None = the longest max_length of the run's
    # stages (what the model was trained on), else the model's position limit.
    max_input_tokens: PositiveInt | None = None
    max_new_tokens_cap: PositiveInt = 256  # chat `max_tokens` above this is refused
    media_cache_clips: int = Field(256, ge=0)  # processed clips kept per gateway (LRU)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class Auth(Strict):
    """Bearer API keys (`emoverse.serving.auth`): each gateway replica reads them from its
    environment and/or a file, so they never appear in the Serve config; none = open."""

    api_keys_env: str | None = "EMOVERSE_API_KEYS"  # comma- or newline-separated keys
    api_keys_file: str | None = None  # one key per line; re-read when it changes


class Page(Strict):
    """The web page at `GET /`."""

    enabled: bool = True
    max_listed_clips: PositiveInt = 500  # clips under the media root offered to pick


class ServeArgs(Strict):
    """Arguments of the serving application (the builder's typed args)."""

    model: str  # a run directory, a stage checkpoint, or a (exported) HF model directory
    default_model: str | None = None  # a model id; None = the run's last finished stage
    adapters: dict[str, AdapterSpec] = {}
    media: MediaConfig | None = None  # None = the run's recipe media (as in training)
    media_root: str | None = None  # where `video_path` may point; None = uploads only
    limits: Limits = Limits()
    max_new_tokens: dict[str, PositiveInt] = DEFAULT_BUDGETS
    batching: Batching = Batching()
    model_server: ModelServerSpec = ModelServerSpec()
    gateway: DeploymentSpec = DeploymentSpec()
    trust_remote_code: bool = False  # remote model code runs only when asked for
    auth: Auth = Auth()
    page: Page = Page()

    @field_validator("max_new_tokens")
    @classmethod
    def _known_tasks(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(TASK_NAMES))
        if unknown:
            raise ValueError(f"max_new_tokens: unknown task(s) {unknown}; known: "
                             f"{', '.join(TASK_NAMES)}")
        return {**DEFAULT_BUDGETS, **value}

    @model_validator(mode="after")
    def _batches_can_fill(self) -> "ServeArgs":
        if self.batching.enabled and \
                self.model_server.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"model_server.max_ongoing_requests ({self.model_server.max_ongoing_requests}) "
                f"must be at least batching.max_batch_size ({self.batching.max_batch_size}), "
                "or batches can never fill")
        return self


def sized_for_local(args: ServeArgs, cpus: float, gpus: float) -> tuple[ServeArgs, str | None]:
    """`args` with the model deployment's autoscaling capped to the replicas this Ray
    instance can place beside the gateways, unless `model_server.autoscaling` was set.

    The defaults suit a cluster (an autoscaler adds nodes); on one small machine a replica
    that can never be placed only makes Serve warn every 30 s. Returns (args, what changed)."""
    server, gateway = args.model_server, args.gateway
    if server.autoscaling is None or "autoscaling" in server.model_fields_set:
        return args, None
    gateways = gateway.autoscaling.min_replicas if gateway.autoscaling else gateway.num_replicas
    room = [(cpus - gateways * gateway.num_cpus) / server.num_cpus] if server.num_cpus else []
    room += [(gpus - gateways * gateway.num_gpus) / server.num_gpus] if server.num_gpus else []
    fits = max(1, int(min(room, default=server.autoscaling.max_replicas) + 1e-9))
    if fits >= server.autoscaling.max_replicas:
        return args, None
    scaling = server.autoscaling.model_copy(update={
        "max_replicas": fits, "min_replicas": min(server.autoscaling.min_replicas, fits)})
    sized = args.model_copy(update={"model_server": server.model_copy(
        update={"autoscaling": scaling})})
    return sized, (f"model_server.autoscaling.max_replicas {server.autoscaling.max_replicas} "
                   f"-> {fits}: this Ray instance has {cpus:g} CPU(s) and {gpus:g} GPU(s), "
                   f"the gateway takes {gateways * gateway.num_cpus:g} CPU(s) and a model "
                   f"replica {server.num_cpus:g} CPU(s), {server.num_gpus:g} GPU(s)")


def serve_args(model: str | None = None, config: str | Path | None = None,
               overrides: list[str] | None = None) -> ServeArgs:
    """Arguments from a YAML file (ServeArgs fields, or a Serve config holding the app),
    the model, and `key=value` overrides (`batching.enabled=false`), validated."""
    data: dict = {}
    if config:
        data = read_mapping(config, "serving arguments")
        if "applications" in data:
            data = next(iter(load_serve_config(config)[1].values())).model_dump(mode="json")
    if model:
        data["model"] = model
    apply_key_values(data, overrides or [])
    return validated(ServeArgs, data, f"serving arguments{f' ({config})' if config else ''}")


def serve_config(args: ServeArgs, name: str = "emoverse", route_prefix: str = "/",
                 host: str = "0.0.0.0", port: int = 8000) -> dict:
    """A Serve config (`serve deploy`, RayService `serveConfigV2`) with one application."""
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": name,
            "route_prefix": route_prefix,
            "import_path": IMPORT_PATH,
            "args": args.model_dump(mode="json"),
        }],
    }
    _validate_schema(config)
    return config


def write_serve_config(config: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Serve config written by `emoverse serve build`; deploy with `serve deploy "
              f"{path.name}` or embed as a RayService's serveConfigV2.\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def load_serve_config(path: str | Path) -> tuple[dict, dict[str, ServeArgs]]:
    """Read and validate a Serve config file: Serve's schema, then each emoverse
    application's args against `ServeArgs`. Returns (config, {app name: args})."""
    config = read_mapping(path, "Serve config")
    _validate_schema(config, str(path))
    apps = {app["name"]: validated(ServeArgs, app.get("args") or {},
                                   f"{path}: application {app['name']!r} has invalid args")
            for app in config["applications"] if app.get("import_path") == IMPORT_PATH}
    if not apps:
        raise ValueError(f"{path}: no application imports {IMPORT_PATH}")
    return config, apps


def _validate_schema(config: dict, where: str = "serve config") -> None:
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValueError as exc:
        raise ValueError(f"{where}: not a valid Serve config: {exc}") from exc
