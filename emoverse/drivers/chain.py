"""The M2SE stage chain, written once: a recipe's stages in order, each trained on Ray Train
from the previous stage's checkpoint, or reused where it has already finished.

`train_stages` yields each stage as it is done, so a recipe run evaluates it and a sweep
trial reports its objective, while what happens in between is the same for both: the
lineage every checkpoint records, Ray Train's validation of the final checkpoint, and
keeping the stage in Hugging Face form. Where a stage lives is the caller's `StageStore`:
all stages of a run in its run directory (`RunStore`), or, in a sweep, each stage keyed by
its configuration and everything it was trained from (`PrefixStore`), so trials sharing a
prefix of stages share those stages.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from emoverse.console import logger
from emoverse.distributed.stage_trainer import fit_stage
from emoverse.emt.manifest import manifest_hash, read_manifest
from emoverse.evaluation.validation import validated_metrics
from emoverse.media.cache import face_table, low_face_rates
from emoverse.model.checkpoint import load_processor
from emoverse.model.generation import answer_budgets
from emoverse.recipe import Recipe, StageConfig
from emoverse.rundir import RunDir
from emoverse.train.budget import check_budgets

log = logger(__name__)


@dataclass(frozen=True)
class ChainData:
    """What every stage of a chain starts from and trains on."""

    base_model: str  # the first stage's parent
    manifest: str
    manifest_hash: str
    cache: str  # the media stage's cache of the manifest
    key: str  # identity of base model, manifest and media: the root of prefix keys
    validation: dict | None = None  # keyword arguments of `evaluation.validation.validate`

    def to_dict(self) -> dict:
        return asdict(self)


def chain_data(recipe: Recipe, base_model: str, manifest: str | Path,
               cache: str | Path) -> ChainData:
    """The chain's data, with Ray Train's validation when the recipe asks for it."""
    digest = manifest_hash(manifest)
    validation = None
    if recipe.eval.validate_split is not None:
        split = recipe.eval.validate_split
        budget = recipe.eval.max_new_tokens or answer_budgets(
            read_manifest(manifest).to_pandas(), base_model, split)
        validation = {"cache_dir": str(cache), "manifest": str(manifest), "split": split,
                      "max_new_tokens": budget, "batch_size": recipe.eval.batch_size}
    key = f"{base_model}|{digest}|{recipe.media.settings_json()}"
    if recipe.deterministic:  # another split of the data among workers: other stages
        key += "|deterministic"
    return ChainData(base_model=str(base_model), manifest=str(manifest), manifest_hash=digest,
                     cache=str(cache), key=key, validation=validation)


def log_face_rates(stats: dict, threshold: float) -> None:
    """The face-found table per task and split, and a warning for each one under threshold."""
    log.info("face found per task and split:\n%s", face_table(stats))
    for line in low_face_rates(stats, threshold):
        log.warning(line)


def log_budgets(recipe: Recipe, manifest: str | Path, base: str) -> None:
    """Check every stage's sequence budget (a `BudgetError` if one does not fit)."""
    budgets = check_budgets(recipe, read_manifest(manifest).to_pandas(), load_processor(base))
    log.info("sequence budget (longest sample / max_length): %s", ", ".join(
        f"{b.stage} {b.total}/{b.max_length} ({b.visual} visual)" for b in budgets))


@dataclass(frozen=True)
class StageDone:
    stage: StageConfig
    index: int  # 1-based position in the recipe
    checkpoint: Path  # the stage in Hugging Face form, with lineage.json
    trained: bool  # False: reused, finished earlier
    answers: Path | None = None  # Ray Train's final checkpoint, with the stage's answers


class StageStore(Protocol):
    def __call__(self, stage: StageConfig, key: str) -> tuple[RunDir, Path]:
        """Where the stage with prefix key `key` is kept, and Ray Train's state of it."""


class RunStore:
    """Every stage of one run in its run directory (`checkpoints/<stage>`, `ray/`)."""

    def __init__(self, run: RunDir):
        self.run = run

    def __call__(self, stage: StageConfig, key: str) -> tuple[RunDir, Path]:
        return self.run, self.run.ray_storage


class PrefixStore:
    """Stages under `root/<prefix key>/`: a stage trained once serves every trial whose
    stages up to it are the same."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __call__(self, stage: StageConfig, key: str) -> tuple[RunDir, Path]:
        return RunDir(self.root / key), self.root / key / "ray"


def prefix_key(parent_key: str, stage: StageConfig) -> str:
    """A stage's identity: its configuration and everything it was trained from."""
    return hashlib.sha256(f"{parent_key}|{stage.model_dump_json()}".encode()).hexdigest()[:16]


def train_stages(recipe: Recipe, data: ChainData, store: StageStore,
                 only: list[str] | None = None,
                 predict: Callable[[StageConfig], dict | None] | None = None,
                 track: Callable[[StageConfig], object] | None = None
                 ) -> Iterator[StageDone]:
    """Train (or reuse) the recipe's stages in order, each from the previous one's
    checkpoint, yielding each when done. With `only`, the chain ends at the last of those
    stages, and every stage before them must have finished already. `predict(stage)`:
    the rows a trained stage's workers answer at the end (`fit_stage`'s `predict`).
    `track(stage)`: the MLflow run its worker of rank 0 logs into (`fit_stage`'s
    `tracking`), asked for just before the stage trains."""
    lineage = {"recipe": recipe.digest(), "manifest": data.manifest_hash,
               "media_cache": Path(data.cache).name, "run_seed": recipe.seed}
    parent, key = data.base_model, data.key
    for index, configured in enumerate(recipe.stages, start=1):
        stage = recipe.seeded_stage(configured)
        key = prefix_key(key, stage)
        run, ray_storage = store(stage, key)
        checkpoint = run.checkpoint(stage.name)
        trained = not run.is_finished(stage.name)
        answers = None
        if not trained:
            log.info("%s: finished earlier, reusing %s", stage.name, checkpoint)
        elif only and stage.name not in only:
            raise ValueError(f"stage {stage.name!r} comes before the requested stages and has "
                             f"not finished in {run.path}; run it first")
        else:
            log.info("training %s (%s, %s) on Ray Train, %d workers", stage.name,
                     stage.trainable.mode, stage.strategy.kind, recipe.scaling.num_workers)
            asked = predict(stage) if predict else None
            final, reported = fit_stage(stage, data.cache, parent, ray_storage, recipe.scaling,
                                        {**lineage, "parent": str(parent),
                                         "stage_seed": configured.seed},
                                        validation=data.validation,
                                        frame_size=recipe.media.size, predict=asked,
                                        deterministic=recipe.deterministic,
                                        tracking=track(stage) if track else None)
            run.keep_stage(stage.name, final, str(parent), validated_metrics(reported) or None)
            answers = final if asked else None
        yield StageDone(stage, index, checkpoint, trained, answers)
        if only and stage.name == only[-1]:
            return
        parent = checkpoint
