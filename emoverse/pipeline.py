"""Run a recipe end to end: media stage, each stage's training, evaluation after each.

Reads top to bottom like a torchtune recipe; the Ray work happens in
`emoverse.distributed`, everything else is plain Python.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emoverse.distributed.inference import predict
from emoverse.distributed.media_stage import run_media_stage
from emoverse.distributed.session import ensure_ray
from emoverse.distributed.training import fit_stage
from emoverse.emt.manifest import manifest_hash, read_manifest
from emoverse.evaluation.scoring import baselines, score, table
from emoverse.model.checkpoint import load_processor
from emoverse.recipe import Recipe, dump_recipe


def say(message: str) -> None:
    print(f"[emoverse] {message}", flush=True)


def answer_budget(manifest: pd.DataFrame, model_path: str | Path, split: str) -> int:
    """Enough new tokens for the longest target of the split, plus a margin."""
    tokenizer = load_processor(model_path).tokenizer
    targets = manifest[manifest.split == split].target.tolist()
    return max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets) + 4


def run_recipe(recipe: Recipe, manifest_path: str | Path, run_dir: str | Path,
               cache_root: str | Path | None = None) -> dict:
    """Train every stage of `recipe` in order, evaluating after each; returns the metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, run_dir / "recipe.yaml")
    manifest = read_manifest(manifest_path).to_pandas()
    ensure_ray()

    say("media stage: decoding clips and cropping faces on Ray Data")
    cache = run_media_stage(manifest_path, recipe.media, cache_root or run_dir / "media-cache")
    stats = json.loads((cache / "stats.json").read_text())
    say(f"media: {stats['ok']}/{stats['clips']} clips usable, face found in "
        f"{stats['face_found_rate']:.0%}, {stats['failed']} failed (see {cache}/stats.json)")

    budget = recipe.eval.max_new_tokens or answer_budget(manifest, recipe.base_model,
                                                         recipe.eval.split)
    lineage = {"recipe": recipe.digest(), "manifest": manifest_hash(manifest_path)}
    results: dict = {"stages": {}, "media": {k: v for k, v in stats.items() if k != "errors"}}
    parent: str | Path = recipe.base_model
    for stage in recipe.stages:
        say(f"training {stage.name} ({stage.trainable.mode}) on Ray Train, "
            f"{recipe.scaling.num_workers} workers")
        checkpoint = fit_stage(stage, cache, parent, run_dir, recipe.scaling, lineage)
        say(f"evaluating {stage.name} on the {recipe.eval.split} split")
        preds = predict(cache, checkpoint, recipe.eval.split, budget, recipe.eval.batch_size)
        preds.to_parquet(run_dir / f"{stage.name}-predictions.parquet")
        results["stages"][stage.name] = {"checkpoint": str(checkpoint),
                                         "metrics": score(manifest, preds)}
        parent = checkpoint
    eval_ids = preds.groupby("task").sample_id.apply(list).to_dict()
    results["baseline"] = baselines(manifest, eval_ids)
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def results_table(results: dict) -> str:
    columns = {name: r["metrics"] for name, r in results["stages"].items()}
    columns["majority baseline"] = results["baseline"]
    return table(columns)
