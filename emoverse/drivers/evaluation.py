"""`emoverse eval run --model DIR_OR_RUN [--manifest M] [--tasks T ...] [KEY=VALUE ...]`

Evaluate a model on a manifest's split: the media stage (cached), greedy generation on a
Ray Data actor pool (every row exactly once), or the answers a stage's Ray Train workers
wrote with its final checkpoint (a recipe run's evaluation, `eval.in_train_workers`),
parsing, the benchmarks' metrics, the majority baselines, and a report (metrics.json with
the model, manifest and recipe hashes, per-sample predictions, figures). Greedy decoding
over a fixed row order makes a re-run, after an interruption or not, give identical
numbers; the report is written atomically, so an interrupted run leaves nothing
half-written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emoverse.distributed.inference import predict
from emoverse.distributed.media_stage import run_media_stage
from emoverse.distributed.session import ensure_ray
from emoverse.emt.manifest import manifest_hash, read_manifest
from emoverse.evaluation.report import METRICS, write_report
from emoverse.evaluation.scoring import baselines, baselines_by_source, by_source, score
from emoverse.media.cache import clip_files
from emoverse.model.checkpoint import LINEAGE, hears, is_checkpoint, model_hash, read_lineage
from emoverse.model.generation import answer_budgets
from emoverse.recipe import EvalConfig, MediaConfig
from emoverse.train.stage import read_predictions


@dataclass(frozen=True)
class EvalRequest:
    model: Path  # a stage checkpoint or Hugging Face model directory
    manifest: Path
    out: Path
    media: MediaConfig
    cache_root: Path
    config: EvalConfig = EvalConfig()
    tasks: tuple[str, ...] | None = None  # None: every task the split has
    num_actors: int | None = None  # None: the config's
    previous: Path | None = None  # an earlier evaluation to draw beside this one
    # A directory whose predictions/ already answer these rows: a stage's final Ray
    # checkpoint when its workers answered them (`fit_stage(predict=...)`).
    answers: Path | None = None


def evaluate(req: EvalRequest) -> dict:
    """Run the evaluation of `req` and write its report to `req.out`; returns the metrics."""
    manifest = read_manifest(req.manifest).to_pandas()
    split = req.config.split
    present = set(manifest[manifest.split == split].task)
    tasks = tuple(t for t in (req.tasks or sorted(present)))
    missing = [t for t in tasks if t not in present]
    if missing or not tasks:
        raise ValueError(f"manifest {req.manifest} has no {split!r} samples of "
                         f"{', '.join(missing) or 'any task'}")
    if hears(req.model) and req.media.audio is None:
        raise ValueError(f"{req.model} was trained to hear the clips' audio, but the media "
                         "settings have no media.audio; evaluate it with its run's recipe, "
                         "or give media.audio.max_seconds=...")
    previous = json.loads((req.previous / METRICS).read_text()) if req.previous else None
    ensure_ray()
    cache = run_media_stage(req.manifest, req.media, req.cache_root)
    budget = req.config.max_new_tokens or answer_budgets(manifest, req.model, split)
    preds = stage_answers(req.answers, cache, split, tasks) if req.answers else None
    answered_by = "stage workers" if preds is not None else "model actors"
    if preds is None:  # no answers given, or a stage resumed from before it wrote any
        preds = predict(cache, req.model, split, budget, req.config.batch_size,
                        req.num_actors or req.config.num_actors, tasks=tasks)
    preds = preds.sort_values("sample_id").reset_index(drop=True)
    ids = preds.groupby("task").sample_id.apply(list).to_dict()
    lineage = read_lineage(req.model) if is_checkpoint(req.model) else {}
    metrics = {
        "model": str(req.model), "model_hash": model_hash(req.model),
        "recipe_hash": lineage.get("recipe"), "stage": lineage.get("stage"),
        "manifest": str(req.manifest), "manifest_hash": manifest_hash(req.manifest),
        "split": split, "max_new_tokens": budget, "decoding": "greedy",
        "answered_by": answered_by,
        "media": req.media.model_dump(),
        "tasks": score(manifest, preds),
        "sources": by_source(manifest, preds),  # tasks whose rows come from several
        "unparsed_counts": _unparsed_counts(preds),
        "baseline": baselines(manifest, ids),
        "baseline_sources": baselines_by_source(manifest, ids),
    }
    if previous:
        # the earlier stage's name, not its report's path (figures read at their saved size)
        previous.setdefault("label", previous.get("stage") or req.previous.name)
    write_report(req.out, metrics, preds, manifest, previous)
    if is_checkpoint(req.model):  # the checkpoint's lineage records its evaluation too
        _record_in_lineage(Path(req.model), split, metrics["tasks"])
    return metrics


def stage_answers(answers: Path, cache: Path, split: str,
                  tasks: tuple[str, ...]) -> pd.DataFrame | None:
    """The answers written with a stage's checkpoint, checked to cover every usable clip
    of the split's `tasks` exactly once; None when it holds none."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    preds = read_predictions(answers)
    if preds is None:
        return None
    clips = pq.read_table(clip_files(cache), columns=["sample_id", "task", "split", "ok"])
    clips = clips.filter(pc.and_(pc.equal(clips["split"], split), clips["ok"]))
    wanted = {s for s, t in zip(clips["sample_id"].to_pylist(), clips["task"].to_pylist())
              if t in tasks}
    got = preds.sample_id.tolist()
    if len(got) != len(set(got)) or set(got) != wanted:
        raise ValueError(f"the answers in {answers}/predictions do not cover the {split!r} "
                         f"clips of {', '.join(tasks)} exactly once ({len(got)} answers, "
                         f"{len(set(got))} distinct, {len(wanted)} clips)")
    return preds


def _unparsed_counts(preds: pd.DataFrame) -> dict[str, int]:
    from emoverse.tasks import get_task

    return {t: int(sum(not get_task(t).parse(p).ok for p in group.prediction))
            for t, group in preds.groupby("task")}


def _record_in_lineage(checkpoint: Path, split: str, tasks: dict) -> None:
    lineage = read_lineage(checkpoint)
    lineage.setdefault("evaluations", {})[split] = {
        t: {"primary": m["primary"], m["primary"]: m[m["primary"]]} for t, m in tasks.items()}
    (checkpoint / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
