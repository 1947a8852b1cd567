"""What a sweep searches, and how a trial's sample becomes a recipe. No Ray.

A space file names, per stage, the mixture entries whose weights to search (each a
range), and optionally a learning-rate range and LoRA ranks:

    stages:
      stage2-reason-finetuning:
        weights: {eri: [0.1, 1.0], mer: [0.1, 1.0], ecpe: [0.1, 1.0]}
        lr: [1.0e-4, 3.0e-3]      # log-uniform
        lora_r: [8, 16, 32]       # one of
    points:                       # optional: evaluated first, in order, before the search
      - stage2-reason-finetuning: {weights: {eri: 1.0, mer: 0.2, ecpe: 0.5}, lr: 1.0e-3,
                                   lora_r: 16}

The recipe's own values are evaluated before those (`recipe_point`), so a sweep always
says whether it beat the recipe as written. Weights are sampled independently in their ranges and then normalised so the searched
entries keep the total weight they have in the recipe: a trial moves along the simplex
of task shares, it does not make the stage bigger or smaller.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from emoverse.config_file import Strict, find_config, load_config, shipped
from emoverse.recipe import Recipe


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


class StagePoint(Strict):
    weights: dict[str, PositiveFloat] = Field(default_factory=dict)
    lr: PositiveFloat | None = None
    lora_r: PositiveInt | None = None


class SweepSpace(Strict):
    stages: dict[str, StageSpace]
    points: list[dict[str, StagePoint]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _points_complete_and_in_range(self) -> "SweepSpace":
        for n, point in enumerate(self.points, start=1):
            where = f"points[{n}]"
            if set(point) != set(self.stages):
                raise ValueError(f"{where} names stages {sorted(point)}; the space searches "
                                 f"{sorted(self.stages)}")
            for stage, space in self.stages.items():
                _check_point(f"{where}.{stage}", point[stage], space)
        return self

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


def _check_point(where: str, point: StagePoint, space: StageSpace) -> None:
    if set(point.weights) != set(space.weights):
        raise ValueError(f"{where}: weights {sorted(point.weights)} must be exactly the "
                         f"searched entries {sorted(space.weights)}")
    for key, (low, high) in space.weights.items():
        if not low <= point.weights[key] <= high:
            raise ValueError(f"{where}: weight {key}={point.weights[key]} is outside "
                             f"[{low}, {high}]")
    if bool(space.lr) != (point.lr is not None) or (
            space.lr and not space.lr[0] <= point.lr <= space.lr[1]):
        raise ValueError(f"{where}: lr must be given exactly when searched, within {space.lr}")
    if bool(space.lora_r) != (point.lora_r is not None) or (
            space.lora_r and point.lora_r not in space.lora_r):
        raise ValueError(f"{where}: lora_r must be given exactly when searched, one of "
                         f"{space.lora_r}")


def entry_key(task: str, source: str) -> str:
    """How a space names a mixture entry: `task`, or `task/source` for a named source."""
    return task if source == "*" else f"{task}/{source}"


SPACE_DIR = Path(__file__).parent / "spaces"


def shipped_spaces() -> list[str]:
    return shipped(SPACE_DIR)


def load_space(name_or_path: str | Path) -> SweepSpace:
    """A space file, or a shipped space by name (`emoverse/spaces/NAME.yaml`)."""
    return load_config(find_config(name_or_path, SPACE_DIR, "sweep space"), SweepSpace,
                       "sweep space")


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


def point_params(point: dict[str, StagePoint]) -> dict:
    """A point as Tune parameters (`{stage}/{key}` names)."""
    params = {}
    for stage, p in point.items():
        params.update({param_name(stage, k): v for k, v in p.weights.items()})
        if p.lr is not None:
            params[param_name(stage, "lr")] = p.lr
        if p.lora_r is not None:
            params[param_name(stage, "lora_r")] = p.lora_r
    return params


def recipe_point(recipe: Recipe, space: SweepSpace) -> dict[str, StagePoint] | None:
    """The recipe's own values as a point of the space, or None if they lie outside it.

    Only the searched weights' ratios matter, so they are scaled by one factor into
    their ranges where one exists.
    """
    point = {}
    for stage_name, space_stage in space.stages.items():
        stage = recipe.stage(stage_name)
        weights = {entry_key(e.task, e.source): e.weight for e in stage.mixture
                   if entry_key(e.task, e.source) in space_stage.weights}
        low = max((space_stage.weights[k][0] / w for k, w in weights.items()), default=1.0)
        high = min((space_stage.weights[k][1] / w for k, w in weights.items()), default=1.0)
        if low > high:
            return None
        scale = (low * high) ** 0.5
        lr = stage.lr if space_stage.lr else None
        lora_r = stage.trainable.lora.r if space_stage.lora_r else None
        if (lr is not None and not space_stage.lr[0] <= lr <= space_stage.lr[1]) or (
                lora_r is not None and lora_r not in space_stage.lora_r):
            return None
        point[stage_name] = StagePoint(weights={k: min(max(w * scale, space_stage.weights[k][0]),
                                                       space_stage.weights[k][1])
                                                for k, w in weights.items()},
                                       lr=lr, lora_r=lora_r)
    return point
