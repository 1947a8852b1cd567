"""Mixture sweeps on Ray Tune: one Tune function per trial runs the recipe's stages.

Each trial applies its sampled weights (`emoverse.sweep`) to the recipe and trains the
stages in order with `fit_stage`, whose final checkpoint Ray Train validates; after each
stage the trial reports the validation `objective` to Tune, so ASHA can stop a trial
after stage 1. A stage whose configuration and parent are the same as an earlier
trial's (a shared prefix) is reused from the sweep's stage store instead of retrained.
TuneReportCallback is not used: it forwards the workers' per-step training metrics, and
the objective comes from validation after the stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from emoverse.recipe import Recipe, apply_overrides
from emoverse.sweep import SweepSpace, param_name, trial_overrides


def search_space(space: SweepSpace) -> dict:
    """Ray Tune's distributions for the space's parameters."""
    from ray import tune

    params = {}
    for stage, s in space.stages.items():
        for key, (low, high) in s.weights.items():
            params[param_name(stage, key)] = tune.uniform(low, high)
        if s.lr:
            params[param_name(stage, "lr")] = tune.loguniform(*s.lr)
        if s.lora_r:
            params[param_name(stage, "lora_r")] = tune.choice(s.lora_r)
    return params


def prefix_key(parent_key: str, stage_json: str) -> str:
    """A stage's identity: its configuration and everything it was trained from."""
    return hashlib.sha256(f"{parent_key}|{stage_json}".encode()).hexdigest()[:16]


def run_trial(config: dict) -> None:
    """Tune function: train the trial's recipe stage by stage, reporting the objective."""
    from ray import tune

    from emoverse.distributed.training import fit_stage
    from emoverse.evaluation.validation import validated_metrics
    from emoverse.model.checkpoint import read_lineage
    from emoverse.rundir import RunDir

    fixed = config["fixed"]
    base = Recipe.model_validate(fixed["recipe"])
    space = SweepSpace.model_validate(fixed["space"])
    recipe = apply_overrides(base, trial_overrides(base, space, config))
    store = Path(fixed["sweep_dir"]) / "stages"
    parent, parent_key = fixed["base_model"], fixed["data_key"]
    for index, stage in enumerate(recipe.stages, start=1):
        key = prefix_key(parent_key, stage.model_dump_json())
        prefix = RunDir(store / key)
        if not prefix.is_finished(stage.name):
            final, reported = fit_stage(
                stage, fixed["cache"], parent, store / key / "ray", recipe.scaling,
                {"recipe": recipe.digest(), "manifest": fixed["manifest_hash"],
                 "parent": str(parent)}, validation=fixed["validation"])
            prefix.keep_stage(stage.name, final, str(parent), validated_metrics(reported))
        checkpoint = prefix.checkpoint(stage.name)
        validation = read_lineage(checkpoint).get("validation") or {}
        if "objective" not in validation:
            raise RuntimeError(f"stage {stage.name!r} of this trial has no validation "
                               f"objective (see {checkpoint})")
        tune.report({"objective": validation["objective"], "stage": index,
                     "stage_name": stage.name, "checkpoint": str(checkpoint),
                     **{k: v for k, v in validation.items() if "/" in k}})
        parent, parent_key = str(checkpoint), key


def tune_sweep(recipe: Recipe, space: SweepSpace, trials: int, sweep_dir: Path, fixed: dict,
               concurrent: int):
    """Run (or resume) the sweep's trials on Ray Tune with ASHA; returns the ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(run_trial, {"cpu": 0.01})  # its stages reserve theirs
    storage = sweep_dir / "tune"
    if tune.Tuner.can_restore(str(storage / "sweep")):  # an interrupted sweep resumes
        tuner = tune.Tuner.restore(str(storage / "sweep"), trainable=trainable,
                                   resume_errored=True, param_space=_params(space, fixed))
        return tuner.fit()
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=len(recipe.stages),
                              grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(
        trainable, param_space=_params(space, fixed),
        tune_config=tune.TuneConfig(metric="objective", mode="max", num_samples=trials,
                                    scheduler=scheduler, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name="sweep", storage_path=str(storage.resolve())))
    return tuner.fit()


def _params(space: SweepSpace, fixed: dict) -> dict:
    return {**search_space(space), "fixed": json.loads(json.dumps(fixed, default=str))}
