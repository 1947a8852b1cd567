"""Run a recipe: data, media stage, then each stage's training and evaluation, in order.

Reads top to bottom like a torchtune recipe; the Ray work happens in
`emoverse.distributed`, everything else is plain Python. Finished stages are skipped,
an interrupted stage resumes from its last checkpoint (see `emoverse.rundir`).
"""

from __future__ import annotations

import json
from pathlib import Path

from emoverse.distributed.media_stage import run_media_stage
from emoverse.distributed.session import ensure_ray
from emoverse.distributed.stage_trainer import fit_stage
from emoverse.emt.manifest import manifest_hash, read_manifest
from emoverse.drivers.evaluation import EvalRequest
from emoverse.model.generation import answer_budget
from emoverse.drivers.evaluation import evaluate as evaluate_model
from emoverse.evaluation.scoring import table
from emoverse.evaluation.validation import validated_metrics
from emoverse.model.checkpoint import read_lineage
from emoverse.recipe import Recipe
from emoverse.rundir import RunDir
from emoverse.train.curves import write_loss_curves


def say(message: str) -> None:
    print(f"[emoverse] {message}", flush=True)


def train_recipe(recipe: Recipe, run_dir: str | Path, stages: list[str] | None = None,
                 evaluate: bool = True, cache_root: str | Path | None = None) -> dict:
    """Train the recipe's stages (or the named ones) in order; returns the run's metrics."""
    for name in stages or []:
        recipe.stage(name)  # unknown names fail before any work
    if recipe.data.manifest:
        read_manifest(recipe.data.manifest)  # so does a missing or invalid manifest
    run = RunDir(run_dir)
    run.start(recipe)
    say(f"run directory: {run.path}")
    base = run.base_model(recipe)
    manifest_path = run.manifest(recipe, progress=_demo_progress())
    ensure_ray()

    say("media stage: decoding clips and cropping faces on Ray Data")
    cache = run_media_stage(manifest_path, recipe.media, cache_root or run.media_cache,
                            resources=recipe.scaling.media_resources)
    stats = json.loads((cache / "stats.json").read_text())
    say(f"media: {stats['ok']}/{stats['clips']} clips usable, face found in "
        f"{stats['face_found_rate']:.0%}, {stats['failed']} failed (see {cache}/stats.json)")

    results = _previous_results(run)
    results["media"] = {k: v for k, v in stats.items() if k != "errors"}
    lineage = {"recipe": recipe.digest(), "manifest": manifest_hash(manifest_path)}
    parent, previous_eval = base, None
    for stage in recipe.stages:
        checkpoint = run.checkpoint(stage.name)
        if run.is_finished(stage.name):
            say(f"{stage.name}: finished earlier, reusing {checkpoint}")
        elif stages and stage.name not in stages:
            raise ValueError(f"stage {stage.name!r} comes before the requested stages and has "
                             f"not finished in {run.path}; run it first")
        else:
            say(f"training {stage.name} ({stage.trainable.mode}, {stage.strategy.kind}) on "
                f"Ray Train, {recipe.scaling.num_workers} workers")
            final, reported = fit_stage(stage, cache, parent, run.ray_storage, recipe.scaling,
                                        {**lineage, "parent": str(parent)},
                                        validation=_validation(recipe, cache, manifest_path, base))
            run.keep_stage(stage.name, final, str(parent), validated_metrics(reported) or None)
            write_loss_curves({s.name: read_lineage(run.checkpoint(s.name))
                               for s in recipe.stages if run.is_finished(s.name)},
                              run.path / "loss.png")
        if evaluate and stage.name not in results["stages"]:
            say(f"evaluating {stage.name} on the {recipe.eval.split} split")
            request = EvalRequest(
                model=checkpoint, manifest=manifest_path, media=recipe.media,
                out=run.evaluation(stage.name, recipe.eval.split), config=recipe.eval,
                cache_root=Path(cache_root or run.media_cache), previous=previous_eval)
            _record_evaluation(run, results, stage.name, request)
        if evaluate:
            previous_eval = run.evaluation(stage.name, recipe.eval.split)
        parent = checkpoint
        if stages and stage.name == stages[-1]:
            break
    return results


def _record_evaluation(run: RunDir, results: dict, stage: str, request: EvalRequest) -> None:
    """Evaluate a stage's checkpoint and add it to the run's metrics.json."""
    metrics = evaluate_model(request)
    results["stages"][stage] = {"checkpoint": str(request.model), "evaluation": str(request.out),
                                "lineage": read_lineage(request.model),
                                "metrics": metrics["tasks"]}
    results["baseline"] = metrics["baseline"]
    run.metrics_file.write_text(json.dumps(results, indent=2, default=float))


def _validation(recipe: Recipe, cache: Path, manifest_path: Path, base: str) -> dict | None:
    """What Ray Train's validation of each stage needs, when the recipe asks for it."""
    split = recipe.eval.validate_split
    if split is None:
        return None
    manifest = read_manifest(manifest_path).to_pandas()
    budget = recipe.eval.max_new_tokens or answer_budget(manifest, base, split)
    return {"cache_dir": str(cache), "manifest": str(manifest_path), "split": split,
            "max_new_tokens": budget, "batch_size": recipe.eval.batch_size}


def _previous_results(run: RunDir) -> dict:
    if run.metrics_file.is_file():
        return json.loads(run.metrics_file.read_text())
    return {"stages": {}}


def _demo_progress():
    import time

    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.time() - last[0] > 5 or done == total:
            last[0] = time.time()
            say(f"  demo clips {done}/{total}")

    return progress


def results_table(results: dict) -> str:
    columns = {name: r["metrics"] for name, r in results["stages"].items()}
    columns["majority baseline"] = results["baseline"]
    return table(columns)
