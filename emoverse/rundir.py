"""The run directory: where a recipe's run keeps everything, and what is already done.

    recipe.yaml          the resolved recipe (a re-run must match it)
    base-model/          the embedded tiny model, when the recipe's base_model is "tiny"
    data/                the generated demo set, when the recipe names no manifest
    media-cache/         the media stage's cache (unless a shared cache root is given)
    ray/<stage>/         Ray Train's state of each stage: resumable checkpoints
    checkpoints/<stage>/ each finished stage in Hugging Face form, with lineage.json
    eval/<stage>-<split>/ each stage's evaluation report (metrics, predictions, figures)
    metrics.json, loss.png

A stage is finished when `checkpoints/<stage>/lineage.json` exists: it is written last.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from emoverse.atomic_dir import atomic_dir
from emoverse.model.checkpoint import LINEAGE, is_checkpoint
from emoverse.recipe import Recipe, dump_recipe, load_recipe, tiny_arch


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def ray_storage(self) -> Path:
        return self.path / "ray"

    @property
    def media_cache(self) -> Path:
        return self.path / "media-cache"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def is_finished(self, stage: str) -> bool:
        return (self.checkpoint(stage) / LINEAGE).is_file()

    def evaluation(self, stage: str, split: str) -> Path:
        """The report of a stage's evaluation (`emoverse.evaluation.report`)."""
        return self.path / "eval" / f"{stage}-{split}"

    def check(self, recipe: Recipe) -> None:
        """Refuse a recipe other than the one an existing run used."""
        if self.recipe_file.is_file():
            previous = load_recipe(self.recipe_file)
            if previous.digest() != recipe.digest():
                raise ValueError(
                    f"run directory {self.path} holds a run of a different recipe "
                    f"({previous.name}, digest {previous.digest()} vs {recipe.digest()}); "
                    "use a new run directory, or the same recipe and overrides to resume")

    def start(self, recipe: Recipe) -> None:
        """Create the directory, or check that an existing run used the same recipe."""
        self.check(recipe)
        if not self.recipe_file.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            dump_recipe(recipe, self.recipe_file)

    def base_model(self, recipe: Recipe) -> str:
        """The recipe's base model; the embedded tiny one is written on first use."""
        arch = tiny_arch(recipe.base_model)
        if arch is None:
            return recipe.base_model
        from emoverse.model.tiny import write_tiny_model
        from emoverse.model.vocabulary import instruction_corpus

        out = self.path / "base-model"
        if not (out / "config.json").is_file():
            write_tiny_model(out, instruction_corpus(), arch=arch)
        return str(out)

    def manifest(self, recipe: Recipe, progress=None) -> Path:
        """The recipe's manifest; the demo set is generated on first use."""
        if recipe.data.manifest:
            path = Path(recipe.data.manifest)
            if not path.is_file():
                raise FileNotFoundError(f"data.manifest {path} does not exist")
            return path
        from emoverse.emt.demo import build_demo

        out = self.path / "data" / "manifest.parquet"
        if out.is_file():
            return out
        return build_demo(self.path / "data", size=recipe.data.demo_size,
                          seed=recipe.data.demo_seed, progress=progress,
                          voice=recipe.data.demo_voice)

    def keep_stage(self, stage: str, ray_checkpoint: Path, parent: str,
                   validation: dict | None = None) -> Path:
        """Copy a stage's final Ray checkpoint into `checkpoints/<stage>` in HF form.

        The lineage's parent is made relative when it is the previous stage of this run,
        so a run directory can be moved or copied as a whole.
        """
        out = self.checkpoint(stage)
        lineage = json.loads((ray_checkpoint / LINEAGE).read_text())
        parent_path = Path(parent).resolve() if Path(parent).exists() else None
        if parent_path and parent_path.is_relative_to(self.path):
            parent = os.path.relpath(parent_path, out)
        lineage["parent"] = parent
        if validation:  # Ray Train's validation of the final checkpoint
            lineage["validation"] = validation
        with atomic_dir(out) as tmp:
            for part in ("model", "adapter", "processor"):
                if (ray_checkpoint / part).is_dir():
                    shutil.copytree(ray_checkpoint / part, tmp / part)
            (tmp / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
        return out

    def last_checkpoint(self, stage: str | None = None) -> Path:
        """The checkpoint of `stage`, or of the last stage that finished."""
        names = [s.name for s in load_recipe(self.recipe_file).stages]
        if stage:
            if stage not in names:
                raise ValueError(f"run {self.path} has no stage {stage!r} (stages: "
                                 f"{', '.join(names)})")
            names = names[:names.index(stage) + 1]
        finished = [n for n in names if self.is_finished(n)]
        if not finished or (stage and finished[-1] != stage):
            raise ValueError(f"run {self.path}: stage {stage or names[-1]!r} has not finished")
        return self.checkpoint(finished[-1])


def find_run(path: str | Path) -> RunDir | None:
    """The run directory `path` is or lies in (one of its stage checkpoints), or None."""
    path = Path(path)
    for candidate in (path, *path.resolve().parents[:2]):
        if (candidate / "recipe.yaml").is_file():
            return RunDir(candidate)
    return None


def resolve_checkpoint(path: str | Path, stage: str | None = None) -> Path:
    """A stage checkpoint from itself or from a run directory (its last finished stage)."""
    path = Path(path)
    if is_checkpoint(path):
        if stage:
            raise ValueError(f"{path} is a stage checkpoint; --stage applies to run directories")
        return path
    run = RunDir(path)
    if not run.recipe_file.is_file():
        raise FileNotFoundError(f"{path} is neither a stage checkpoint nor a run directory")
    return run.last_checkpoint(stage)
