"""Typed configuration: media parameters, stages, and the recipe that chains them.

A recipe is YAML validated by these pydantic models. A stage is a recipe entry, not code:
every stage runs the same training loop with its own mixture and hyperparameters.
Shipped recipes live in `emoverse/recipes/*.yaml` and are found by name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from emoverse.config_file import (Strict, apply_key_values, find_config, load_config, shipped,
                                  validated)
from emoverse.tasks import TASK_NAMES

RECIPE_DIR = Path(__file__).parent / "recipes"
TINY = "tiny"  # base_model naming the embedded default, written into the run directory


class AudioConfig(Strict):
    """The clip's audio track, for stages that hear (`StageConfig.audio`): decoded beside
    the frames, mixed to mono, resampled and cut to the sampled span, and cached."""

    sample_rate: PositiveInt = 16000  # what Whisper-style audio encoders take
    # Spans longer than this keep their middle `max_seconds` (the cache holds this many
    # samples a clip); Qwen2.5-Omni gives 25 audio tokens a second.
    max_seconds: PositiveFloat = 10.0
    # A clip without an audio track, or with one that cannot be decoded: "error" makes it
    # unusable (reported in errors.csv); "silence" uses silence of the span's length and
    # counts it in stats.json.
    missing: Literal["error", "silence"] = "error"

    @property
    def max_samples(self) -> int:
        return int(round(self.sample_rate * self.max_seconds))


class MediaConfig(Strict):
    """How clips become model input; every field is part of the media cache key."""

    num_frames: PositiveInt = 8  # uniformly sampled segments, as in the paper
    size: PositiveInt = 224  # square side of the face crop fed to the model
    # mtcnn's weights ship in a dependency; yunet needs yunet_model; README compares them.
    detector: Literal["mtcnn", "yunet", "haar", "none"] = "mtcnn"
    yunet_model: str | None = None  # path to YuNet ONNX weights (detector=yunet)
    score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    # Faces smaller than this share of the detection frame's shorter side are ignored:
    # it keeps detectors off background faces and Haar off eyes, and bounds MTCNN's pyramid.
    min_face: float = Field(0.25, gt=0.0, le=1.0)
    margin: float = Field(0.25, ge=0.0, le=2.0)  # extra context around the face box
    max_decode_side: PositiveInt = 480  # decode larger sources at reduced resolution
    # The detector sees frames scaled down to this shorter side: detection cost falls
    # with the pixel count, the box is scaled back, and the crop keeps full resolution.
    detect_side: int = Field(192, ge=32)
    # Detect on this many of the sampled frames, evenly spread with the first and last; the
    # others take the nearest detected box. None: every frame. For faces that hardly move.
    detect_frames: PositiveInt | None = None
    max_source_side: PositiveInt = 4096  # larger sources are rejected as unusable
    use_peak_frame: bool = True  # sample OpenFace's peak-expression frame when known
    # The audio track, decoded and cached beside the frames; None: frames only.
    audio: AudioConfig | None = None

    @model_validator(mode="after")
    def _yunet_needs_weights(self) -> "MediaConfig":
        if self.detector == "yunet" and not self.yunet_model:
            raise ValueError("media.detector=yunet needs media.yunet_model (path to the ONNX file)")
        return self

    def settings_json(self) -> str:
        """The settings as JSON, `audio` left out when it is off: a frames-only cache keeps
        the key it had before audio existed."""
        return self.model_dump_json(exclude={"audio"} if self.audio is None else None)

    def key(self) -> str:
        return hashlib.sha256(self.settings_json().encode()).hexdigest()[:12]


class MixtureEntry(Strict):
    task: str
    source: str = "*"  # a corpus name, or * for every source
    weight: PositiveFloat

    @model_validator(mode="after")
    def _known_task(self) -> "MixtureEntry":
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASK_NAMES)}")
        return self


class LoraConfig(Strict):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # Regex over module names; None = every linear layer of the language model.
    target_modules: str | None = None
    # Modules trained in full and saved inside the adapter (peft `modules_to_save`), e.g.
    # lm_head when the new stage must emit tokens the previous stage learnt to suppress.
    modules_to_save: tuple[str, ...] = ()


class TrainableConfig(Strict):
    """Which parts of the model a stage trains."""

    mode: Literal["full", "lora"] = "lora"
    lora: LoraConfig = LoraConfig()
    projector: bool = True  # train the vision-language projector (paper: yes)
    vision: bool = False  # train the vision encoder (paper: frozen)


class StrategyConfig(Strict):
    """How workers share the model: DDP replicas, or DeepSpeed ZeRO partitioning."""

    kind: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[1, 2, 3] = 2  # deepspeed only
    offload_optimizer: bool = False  # ZeRO optimizer state in CPU memory
    offload_params: bool = False  # ZeRO-3 parameters in CPU memory

    @model_validator(mode="after")
    def _offload_fits_stage(self) -> "StrategyConfig":
        if self.kind == "ddp" and (self.offload_optimizer or self.offload_params):
            raise ValueError("offloading needs strategy.kind=deepspeed")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("strategy.offload_params needs zero_stage 3 (ZeRO-3 partitions "
                             "parameters; stages 1-2 do not)")
        return self


class StageConfig(Strict):
    name: str
    mixture: list[MixtureEntry]
    epochs: PositiveInt = 2
    max_steps: PositiveInt | None = None  # stop after this many optimizer steps
    epoch_size: PositiveInt | None = None  # samples per epoch; None = the mixture's pool
    batch_size: PositiveInt = 8  # global batch per optimizer step (before accumulation)
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 1e-4
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # cosine floor as a share of lr
    max_grad_norm: PositiveFloat = 1.0
    max_length: PositiveInt = 2048
    trainable: TrainableConfig = TrainableConfig()
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast; fp32 master weights
    # auto: flash-attention 2 where it is installed and a GPU is used, else PyTorch's SDPA.
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory
    strategy: StrategyConfig = StrategyConfig()
    checkpoint_every: PositiveInt | None = None  # optimizer steps; epoch ends always save
    seed: int = 0
    log_every: PositiveInt = 50
    # Feed the clip's audio track to the model beside the frames (needs media.audio and a
    # base that hears, such as Qwen2.5-Omni's thinker). Off: frames and transcript only.
    audio: bool = False

    @model_validator(mode="after")
    def _mixture_not_empty(self) -> "StageConfig":
        if not self.mixture:
            raise ValueError(f"stage {self.name!r} has an empty mixture")
        return self


# Where work runs, not what it computes: left out of the recipe's digest, so a run can be
# resumed on a cluster whose node groups are named differently.
PLACEMENT_FIELDS = {"worker_resources", "media_resources"}


class ScalingConfig(Strict):
    num_workers: PositiveInt = 2
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 0.5  # leaves CPU for Ray Data on small machines
    torch_threads: PositiveInt = 1
    max_failures: int = Field(3, ge=-1)  # worker-group restarts per stage (-1: unlimited)
    # Custom Ray resources that pin work to a node group, e.g. {trainer: 1} for each Train
    # worker and {media: 1} for each media actor, offered by `ray start --resources`
    # (rayStartParams on KubeRay, `resources:` in cluster/local.yaml).
    worker_resources: dict[str, PositiveFloat] = {}
    media_resources: dict[str, PositiveFloat] = {}

    @model_validator(mode="after")
    def _custom_resources_only(self) -> "ScalingConfig":
        for field in sorted(PLACEMENT_FIELDS):
            builtin = sorted(set(getattr(self, field)) & {"CPU", "GPU", "memory",
                                                          "object_store_memory"})
            if builtin:
                raise ValueError(f"scaling.{field} names {', '.join(builtin)}: those have "
                                 "their own settings (cpus_per_worker, use_gpu); list only "
                                 "custom resources here")
        return self

    def train_worker_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **self.worker_resources}


class EvalConfig(Strict):
    split: Literal["train", "valid", "test"] = "test"
    # Validate each stage's final checkpoint inside Ray Train on this split, reporting the
    # metrics and their `objective` to Ray (what sweeps optimise); None = no validation.
    validate_split: Literal["train", "valid", "test"] | None = None
    batch_size: PositiveInt = 32
    # None = per task, its longest target in the split + margin
    max_new_tokens: PositiveInt | None = None
    num_actors: PositiveInt = 1  # model actors, each a model copy on one thread
    # What a recipe run evaluates after each stage: the tasks trained so far (a stage-1
    # model was never asked for ERI or ECPE and would decode its whole budget on each),
    # or every task of the split.
    stage_tasks: Literal["trained", "all"] = "trained"
    # Answer a recipe run's evaluation in each stage's own Ray Train workers, right after
    # the final checkpoint, with the model they hold (each worker a share of the rows):
    # no model actors to start and load. DDP stages only; DeepSpeed stages, and
    # `emoverse eval run`, answer on model actors (`num_actors`).
    in_train_workers: bool = True


class DataConfig(Strict):
    """The EMT manifest a recipe trains on; without one, the generated demo set."""

    manifest: str | None = None  # an EMT manifest (`emoverse emt build`)
    # Samples of the demo set when there is no manifest: ~3000 face-bearing training clips
    # (fewer were memorised, not learnt).
    demo_size: PositiveInt = 4600
    demo_seed: int = 0
    # A run warns for each task and split whose clips show a face less often than this.
    min_face_found: float = Field(0.8, ge=0.0, le=1.0)
    # Share of the demo set's MSA and MER samples whose label the voice alone decides (a
    # filler transcript, a neutral face): source "demo-voice", scored apart.
    demo_voice: float = Field(0.0, ge=0.0, le=1.0)


class TrackingConfig(Strict):
    """Experiment tracking in MLflow (`emoverse.tracking`). Not part of the recipe's digest:
    where a run is tracked does not change what it trains."""

    # None: track when MLflow is installed (the `tracking` extra); true: require it.
    enabled: bool | None = None
    # The tracking server; None: $MLFLOW_TRACKING_URI, else a local store in the run
    # directory (`mlflow.db`, artifacts in `mlartifacts/`).
    uri: str | None = None
    # The MLflow experiment; None: $MLFLOW_EXPERIMENT_NAME, else the recipe's name.
    experiment: str | None = None
    # How long a call may wait on the server before the outage is logged, and how long
    # the end of a stage or run waits for queued calls (training never waits on MLflow).
    patience_s: PositiveFloat = 30.0


def tiny_arch(base_model: str) -> str | None:
    """The tiny architecture a recipe's `base_model` names ("tiny" is the default one,
    "tiny:ARCH" another), or None for a real model."""
    if base_model == TINY:
        from emoverse.model.architectures import DEFAULT_ARCH

        return DEFAULT_ARCH
    if base_model.startswith(f"{TINY}:"):
        return base_model.split(":", 1)[1]
    return None


class Recipe(Strict):
    name: str
    # A model directory or hub id; "tiny" = the embedded default, "tiny:ARCH" the tiny
    # model of another architecture (`emoverse model init-tiny --arch`).
    base_model: str
    # The run's seed: each stage's seeds (data order, model init, dropout) derive from it and
    # the stage's own `seed` (`stage_seed`), so `seed=1` gives the whole run another draw.
    seed: int = 0
    # Make a run deterministic on a fixed cluster shape (the same worker count): the media
    # stage writes in manifest order, each Train worker gets its own seeded share of every
    # epoch (no dynamic split), torch runs its deterministic algorithms and dropout is
    # seeded per batch, so the same recipe, data and seed give the same losses and metrics,
    # and a resumed run sees the batches it would have seen. Costs some throughput (the
    # README measures it with `emoverse bench train`).
    deterministic: bool = False
    data: DataConfig = DataConfig()
    media: MediaConfig = MediaConfig()
    stages: list[StageConfig]
    scaling: ScalingConfig = ScalingConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _stage_names_unique(self) -> "Recipe":
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"recipe {self.name!r} needs stages with unique names, got {names}")
        return self

    @model_validator(mode="after")
    def _hearing_has_audio(self) -> "Recipe":
        hearing = [s.name for s in self.stages if s.audio]
        if hearing and self.media.audio is None:
            raise ValueError(f"stage {hearing[0]!r} sets audio: true, but media.audio is not "
                             "set: give media.audio (e.g. media.audio.max_seconds=10)")
        return self

    @model_validator(mode="after")
    def _known_tiny_arch(self) -> "Recipe":
        arch = tiny_arch(self.base_model)
        if arch is not None:
            from emoverse.model.architectures import ARCH_NAMES

            if arch not in ARCH_NAMES:
                raise ValueError(f"base_model {self.base_model!r}: no tiny architecture "
                                 f"{arch!r}; choose one of {', '.join(ARCH_NAMES)}")
        return self

    def hears(self) -> bool:
        """Whether any stage feeds the audio track to the model."""
        return any(s.audio for s in self.stages)

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"recipe {self.name!r} has no stage {name!r}")

    def trained_tasks(self, through: str) -> list[str]:
        """The tasks of every mixture up to and including stage `through`."""
        names = [s.name for s in self.stages]
        done = self.stages[:names.index(self.stage(through).name) + 1]
        return sorted({entry.task for s in done for entry in s.mixture})

    def seeded_stage(self, stage: StageConfig) -> StageConfig:
        """`stage` with the seed it trains with: drawn from the run's seed and its own."""
        return stage.model_copy(update={"seed": stage_seed(self.seed, stage.seed)})

    def digest(self) -> str:
        text = self.model_dump_json(exclude={"scaling": PLACEMENT_FIELDS, "tracking": True,
                                             **_audio_off(self)})
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _audio_off(recipe: "Recipe") -> dict:
    """The audio settings a recipe leaves at their defaults (off), kept out of its digest,
    so a recipe written before audio existed keeps its digest (and its runs resume)."""
    off = {}
    if recipe.media.audio is None:
        off["media"] = {"audio"}
    if recipe.data.demo_voice == 0.0:
        off["data"] = {"demo_voice"}
    hearing = [i for i, s in enumerate(recipe.stages) if s.audio]
    if not hearing:
        off["stages"] = {"__all__": {"audio"}}
    return off


def stage_seed(run_seed: int, stage_seed: int) -> int:
    """A stage's effective seed from the run's seed and the stage's own (a 31-bit number,
    so every consumer takes it). Run seed 0 keeps the stage's seed as it is."""
    if run_seed == 0:
        return stage_seed
    import numpy as np

    return int(np.random.SeedSequence([run_seed, stage_seed]).generate_state(1)[0] >> 1)


def shipped_recipes() -> list[str]:
    return shipped(RECIPE_DIR)


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name or a YAML file, applying `key=value` overrides."""
    return load_config(find_config(name_or_path, RECIPE_DIR, "recipe"), Recipe, "recipe",
                       overrides or [])


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """`recipe` with `key=value` overrides applied, validated again."""
    data = json.loads(recipe.model_dump_json())
    apply_key_values(data, overrides)
    return validated(Recipe, data, f"recipe {recipe.name!r} with overrides")


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(recipe.model_dump_json()), sort_keys=False))
    return path
