"""`emoverse sweep RECIPE --space SPACE.yaml --trials N [--sweep-dir DIR]`

Search a recipe's stage mixture weights (and optionally learning rates and LoRA ranks)
on Ray Tune with ASHA early stopping, optimising the validation objective (the mean of
the tasks' primary metrics). Every trial reuses the sweep's media cache and any stage it
shares with an earlier trial. Writes `trials.csv`, `objective.png` and the best trial as
a ready-to-run recipe, `best-recipe.yaml`. Re-running with the same directory resumes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pandas as pd

from emoverse.console import logger
from emoverse.distributed.media_stage import run_media_stage
from emoverse.distributed.session import cluster_resources, ensure_ray
from emoverse.distributed.tuning import trial_params, tune_sweep
from emoverse.drivers.chain import (ChainData, PrefixStore, chain_data, log_budgets,
                                    log_face_rates, train_stages)
from emoverse.emt.manifest import read_manifest
from emoverse.figures import pyplot
from emoverse.media.cache import read_stats
from emoverse.model.checkpoint import read_lineage
from emoverse.recipe import Recipe, apply_overrides, dump_recipe
from emoverse.recipe_paths import resolve_paths
from emoverse.rundir import RunDir
from emoverse.sweep_space import (SweepSpace, param_name, point_params, recipe_point,
                                  trial_overrides)
from emoverse.tracking.sweeps import SweepTracking

log = logger(__name__)
BEST = "best-recipe.yaml"
SHARE = " share"


def concurrent_trials(recipe: Recipe, cluster: dict[str, float]) -> int:
    """As many trials as the cluster's resources hold: each trial's Train workers (their
    CPUs, GPUs and custom resources) plus one CPU for its data pipeline."""
    scaling = recipe.scaling
    need = {name: scaling.num_workers * amount
            for name, amount in scaling.train_worker_resources().items()}
    need["CPU"] += 1
    if scaling.use_gpu:
        need["GPU"] = need.get("GPU", 0) + scaling.num_workers
    return max(1, min(math.floor(cluster.get(name, 0) / amount)
                      for name, amount in need.items()))


def run_sweep(recipe: Recipe, space: SweepSpace, trials: int, sweep_dir: str | Path,
              search: str = "optuna", seed: int = 0, baseline: bool = True,
              early_stopping: bool = True) -> dict:
    """Run (or resume) a sweep; `baseline` evaluates the recipe's own values first."""
    space.check(recipe)
    recipe = apply_overrides(resolve_paths(recipe), ["eval.validate_split=valid"])
    sweep = RunDir(sweep_dir)
    sweep.check(recipe)  # a different recipe in the same directory is refused
    base = sweep.base_model(recipe)
    manifest = sweep.manifest(recipe)
    log_budgets(recipe, manifest, base)  # refused here, the fixed recipe can reuse the directory
    sweep.start(recipe)
    frame = read_manifest(manifest).to_pandas()
    if not (frame.split == "valid").any():
        raise ValueError(f"manifest {manifest} has no 'valid' split to optimise on")
    tracking = SweepTracking.open(recipe, space, {
        "trials": trials, "search": search, "seed": seed, "baseline": baseline,
        "early_stopping": early_stopping}, sweep.path)  # an unreachable server fails here
    try:
        result = _sweep(recipe, space, trials, sweep, base, manifest, search, seed, baseline,
                        early_stopping, tracking)
    except BaseException:
        if tracking:
            tracking.finish(None, [], "FAILED")
        raise
    if tracking:
        tracking.finish(result["best"], [sweep.path / "trials.csv", sweep.path / "objective.png",
                                         sweep.path / BEST])
    return result


def _sweep(recipe: Recipe, space: SweepSpace, trials: int, sweep: RunDir, base: str,
           manifest: Path, search: str, seed: int, baseline: bool, early_stopping: bool,
           tracking: SweepTracking | None) -> dict:
    ensure_ray()
    cache = run_media_stage(manifest, recipe.media, sweep.media_cache,
                            resources=recipe.scaling.media_resources,
                            ordered=recipe.deterministic)
    log_face_rates(read_stats(cache), recipe.data.min_face_found)
    fixed = {"recipe": recipe.model_dump(mode="json"), "space": space.model_dump(mode="json"),
             "stages": str(sweep.path / "stages"),
             "data": chain_data(recipe, base, manifest, cache).to_dict()}
    concurrent = concurrent_trials(recipe, cluster_resources())
    log.info("sweep: %d trials (%s search, seed %d), %d at a time, %s over %d stages, under %s",
             trials, search, seed, concurrent, "ASHA" if early_stopping else "no early stopping",
             len(recipe.stages), sweep.path)
    results = tune_sweep(run_trial, recipe, space, trials, sweep.path, fixed, concurrent,
                         search, start_points(recipe, space, baseline), seed, early_stopping,
                         tracking.trials if tracking else None)
    table = with_shares(trial_table(results), space)
    table.to_csv(sweep.path / "trials.csv", index=False)
    plot_objective(table, sweep.path / "objective.png")
    best = table[table.stages == len(recipe.stages)].sort_values("objective").iloc[-1]
    params = {k: best[k] for k in table.columns if "/" in k and not k.endswith(SHARE)}
    winner = apply_overrides(recipe, trial_overrides(recipe, space, params))
    dump_recipe(winner.model_copy(update={"name": f"{recipe.name}-best"}), sweep.path / BEST)
    return {"table": table, "best": best.to_dict(), "recipe": sweep.path / BEST}


def run_trial(params: dict, fixed: dict, report: Callable[[dict], None]) -> None:
    """One trial: the recipe with the trial's sampled `params`, its stages trained in
    order (those an earlier trial shares reused from the sweep's stage store), and after
    each stage its validation objective reported, so ASHA can stop the trial there."""
    base = Recipe.model_validate(fixed["recipe"])
    space = SweepSpace.model_validate(fixed["space"])
    recipe = apply_overrides(base, trial_overrides(base, space, params))
    for done in train_stages(recipe, ChainData(**fixed["data"]), PrefixStore(fixed["stages"])):
        validation = read_lineage(done.checkpoint).get("validation") or {}
        if "objective" not in validation:
            raise RuntimeError(f"stage {done.stage.name!r} of this trial has no validation "
                               f"objective (see {done.checkpoint})")
        report({"objective": validation["objective"], "stage": done.index,
                "stage_name": done.stage.name, "checkpoint": str(done.checkpoint),
                **{k: v for k, v in validation.items() if "/" in k}})


def start_points(recipe: Recipe, space: SweepSpace, baseline: bool) -> list[dict]:
    """Tune parameters evaluated before the search: the recipe's values, the space's points."""
    own = recipe_point(recipe, space) if baseline else None
    if baseline and own is None:
        log.info("sweep: the recipe's own values lie outside the space; not evaluated first")
    return [point_params(p) for p in ([own] if own else []) + space.points]


def trial_table(results) -> pd.DataFrame:
    """One row per trial: its sampled parameters, last objective, stages done, status."""
    rows = []
    for result in results:
        config = trial_params(result.config)
        metrics = result.metrics or {}
        rows.append({"trial": metrics.get("trial_id", Path(result.path).name), **config,
                     "objective": metrics.get("objective", float("nan")),
                     "stages": metrics.get("stage", 0),
                     "status": "error" if result.error else
                     ("stopped early" if metrics.get("stage", 0) < _max_stage(results)
                      else "finished")})
    return pd.DataFrame(rows).sort_values("objective", ascending=False)


def with_shares(table: pd.DataFrame, space: SweepSpace) -> pd.DataFrame:
    """Adds each searched weight's share of its stage's searched weights (what a trial
    actually changes: the raw samples are normalised)."""
    table = table.copy()
    for stage, stage_space in space.stages.items():
        cols = [param_name(stage, k) for k in stage_space.weights]
        total = table[cols].sum(axis=1)
        for col in cols:
            table[col + SHARE] = table[col] / total
    return table


def _max_stage(results) -> int:
    return max((r.metrics or {}).get("stage", 0) for r in results)


def plot_objective(table: pd.DataFrame, out: Path) -> None:
    """Objective against each searched parameter, finished and stopped trials apart."""
    plt = pyplot()

    # Weights as shares (their raw samples only matter through their ratios), lr and rank raw.
    params = [c for c in table.columns if "/" in c and (c.endswith(SHARE) or c + SHARE not in
                                                        table.columns)]
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3), squeeze=False)
    for ax, param in zip(axes[0], params):
        for status, marker in (("finished", "o"), ("stopped early", "x")):
            part = table[table.status == status]
            ax.scatter(part[param], part.objective, marker=marker, label=status)
        ax.set_xlabel(param.split("/", 1)[1] + f"\n({param.split('/', 1)[0]})", fontsize=8)
        ax.set_ylabel("validation objective")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
