"""What a sweep searches, and how a trial's sample becomes a recipe. No Ray.

A space file names, per stage, the mixture entries whose weights to search (each a
range), and optionally a learning-rate range and LoRA ranks:

    stages:
      stage2-reason-finetuning:
        weights: {eri: [0.1, 1.0], mer: [0.1, 1.0], ecpe: [0.1, 1.0]}
        lr: [1.0e-4, 3.0e-3]      # log-uniform
        lora_r: [8, 16, 32]       # one of

Weights are sampled independently in their ranges and then normalised so the searched
entries keep the total weight they have in the recipe: a trial moves along the simplex
of task shares, it does not make the stage bigger or smaller.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from emoverse.recipe import Recipe, Strict


class StageSpace(Strict):
    weights: dict[str, tuple[PositiveFloat, PositiveFloat]] = Field(default_factory=dict)
    lr: tuple[PositiveFloat, PositiveFloat] | None = None
    lora_r: list[PositiveInt] | None = None

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "StageSpace":
        for name, (low, high) in [*self.weights.items(), *([("lr", self.lr)] if self.lr else [])]:
            if low > high:
                raise ValueError(f"range of {name!r} is empty: {low} > {high}")
        return self


class SweepSpace(Strict):
    stages: dict[str, StageSpace]

    def check(self, recipe: Recipe) -> None:
        """Every stage and mixture entry the space names exists in `recipe`."""
        for stage_name, space in self.stages.items():
            stage = recipe.stage(stage_name)
            keys = {entry_key(e.task, e.source) for e in stage.mixture}
            unknown = sorted(set(space.weights) - keys)
            if unknown:
                raise ValueError(f"space: stage {stage_name!r} has no mixture entries "
                                 f"{unknown} (it has {sorted(keys)})")
            if space.lora_r and stage.trainable.mode != "lora":
                raise ValueError(f"space: stage {stage_name!r} is not a LoRA stage (lora_r)")


def entry_key(task: str, source: str) -> str:
    """How a space names a mixture entry: `task`, or `task/source` for a named source."""
    return task if source == "*" else f"{task}/{source}"


def load_space(path: str | Path) -> SweepSpace:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep space file {path}")
    return SweepSpace.model_validate(yaml.safe_load(path.read_text()))


def param_name(stage: str, what: str) -> str:
    return f"{stage}/{what}"


def trial_overrides(recipe: Recipe, space: SweepSpace, params: dict) -> list[str]:
    """`key=value` recipe overrides for one trial's sampled `params`."""
    overrides = []
    for stage_name, stage_space in space.stages.items():
        stage = recipe.stage(stage_name)
        keys = [entry_key(e.task, e.source) for e in stage.mixture]
        searched = [k for k in keys if k in stage_space.weights]
        total = sum(e.weight for e, k in zip(stage.mixture, keys) if k in searched)
        raw = {k: float(params[param_name(stage_name, k)]) for k in searched}
        for i, key in enumerate(keys):
            if key in raw:
                share = raw[key] / sum(raw.values())
                overrides.append(f"stages.{stage_name}.mixture.{i}.weight={share * total:.6g}")
        if stage_space.lr:
            overrides.append(f"stages.{stage_name}.lr={params[param_name(stage_name, 'lr')]:.6g}")
        if stage_space.lora_r:
            overrides.append(f"stages.{stage_name}.trainable.lora.r="
                             f"{params[param_name(stage_name, 'lora_r')]}")
    return overrides
