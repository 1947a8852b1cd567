"""`emoverse train RECIPE [KEY=VALUE ...] [--run-dir DIR] [--stage NAME ...]`

A recipe run, top to bottom like a torchtune recipe: the run directory, the base model
and data, the media stage on Ray Data, then the stage chain (`emoverse.drivers.chain`) on
Ray Train with each stage evaluated as it is done. Finished stages are skipped and an
interrupted stage resumes from its last checkpoint (see `emoverse.rundir`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc

from emoverse.console import logger
from emoverse.distributed.media_stage import run_media_stage
from emoverse.distributed.session import ensure_ray
from emoverse.drivers.chain import (RunStore, chain_data, log_budgets, log_face_rates,
                                    train_stages)
from emoverse.drivers.evaluation import EvalRequest
from emoverse.drivers.evaluation import evaluate as evaluate_model
from emoverse.emt.manifest import read_manifest
from emoverse.evaluation.scoring import table
from emoverse.media.cache import read_stats
from emoverse.model.checkpoint import read_lineage
from emoverse.phase_clock import PhaseClock, ProgressLog
from emoverse.recipe import Recipe
from emoverse.recipe_paths import resolve_paths
from emoverse.rundir import RunDir
from emoverse.train.curves import write_loss_curves

log = logger(__name__)


def train_recipe(recipe: Recipe, run_dir: str | Path, stages: list[str] | None = None,
                 evaluate: bool = True, cache_root: str | Path | None = None,
                 clock: PhaseClock | None = None) -> dict:
    """Train the recipe's stages (or the named ones) in order; returns the run's metrics.
    `clock` (started by the caller) gets a mark at the end of each phase."""
    clock = clock or PhaseClock()
    recipe = resolve_paths(recipe)  # the caller's paths, checked before any work
    for name in stages or []:
        recipe.stage(name)  # unknown names fail before any work
    if recipe.data.manifest:
        read_manifest(recipe.data.manifest)  # so does a missing or invalid manifest
    run = RunDir(run_dir)
    run.check(recipe)
    log.info("run directory: %s", run.path)
    base = run.base_model(recipe)
    clock.mark("base model")
    manifest = run.manifest(recipe, progress=ProgressLog("demo clips", log))
    clock.mark("demo clips" if recipe.data.manifest is None else "manifest")
    # Before the recipe is recorded: a run refused here can be re-run with a fixed recipe.
    log_budgets(recipe, manifest, base)
    run.start(recipe)
    clock.mark("checks")
    ensure_ray()
    clock.mark("Ray start")

    log.info("media stage: decoding clips and cropping faces on Ray Data")
    cache_root = Path(cache_root or run.media_cache)
    cache = run_media_stage(manifest, recipe.media, cache_root,
                            resources=recipe.scaling.media_resources,
                            progress=ProgressLog("media clips", log))
    stats = read_stats(cache)
    log.info("media: %d/%d clips usable, face found in %.0f%%, %d failed (see %s/stats.json)",
             stats["ok"], stats["clips"], 100 * stats["face_found_rate"], stats["failed"], cache)
    log_face_rates(stats, recipe.data.min_face_found)
    clock.mark("media stage")

    results = _previous_results(run)
    results["media"] = {k: v for k, v in stats.items() if k != "errors"}
    previous_eval = None
    data = chain_data(recipe, base, manifest, cache)
    rows = read_manifest(manifest)
    split_tasks = set(rows.filter(pc.equal(rows["split"], recipe.eval.split))["task"]
                      .to_pylist())
    for done in train_stages(recipe, data, RunStore(run), only=stages):
        name = done.stage.name
        if done.trained:
            write_loss_curves({s.name: read_lineage(run.checkpoint(s.name))
                               for s in recipe.stages if run.is_finished(s.name)},
                              run.path / "loss.png")
        clock.mark(f"{'train' if done.trained else 'reuse'} {name}")
        if not evaluate:
            continue
        report = run.evaluation(name, recipe.eval.split)
        if name not in results["stages"]:
            log.info("evaluating %s on the %s split", name, recipe.eval.split)
            _record_evaluation(run, results, name, EvalRequest(
                model=done.checkpoint, manifest=manifest, media=recipe.media, out=report,
                config=recipe.eval, cache_root=cache_root, previous=previous_eval,
                tasks=_evaluated_tasks(recipe, name, split_tasks)))
            clock.mark(f"evaluate {name}")
        previous_eval = report
    return results


def _evaluated_tasks(recipe: Recipe, stage: str, split_tasks: set[str]) -> tuple[str, ...] | None:
    """The tasks evaluated after `stage` (None: all of the split's, as `eval.stage_tasks`
    says); tasks the split lacks are left out (a corpus may carry some tasks only)."""
    if recipe.eval.stage_tasks == "all":
        return None
    return tuple(t for t in recipe.trained_tasks(stage) if t in split_tasks) or None


def _record_evaluation(run: RunDir, results: dict, stage: str, request: EvalRequest) -> None:
    """Evaluate a stage's checkpoint and add it to the run's metrics.json."""
    metrics = evaluate_model(request)
    results["stages"][stage] = {"checkpoint": str(request.model), "evaluation": str(request.out),
                                "lineage": read_lineage(request.model),
                                "metrics": metrics["tasks"]}
    results["baseline"] = metrics["baseline"]
    run.metrics_file.write_text(json.dumps(results, indent=2, default=float))


def _previous_results(run: RunDir) -> dict:
    if run.metrics_file.is_file():
        return json.loads(run.metrics_file.read_text())
    return {"stages": {}}


def results_table(results: dict) -> str:
    columns = {name: r["metrics"] for name, r in results["stages"].items()}
    columns["majority baseline"] = results["baseline"]
    return table(columns)
