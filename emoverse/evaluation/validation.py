"""Validation of a stage checkpoint in one process: the split's clips from the media
cache, greedy answers, the tasks' metrics and one objective. No Ray.

Ray Train runs this on a stage's final checkpoint (`ValidationConfig`), so the metrics
are reported with the checkpoint, which is what sweeps optimise. The full evaluator
(`emoverse.drivers.evaluation`) is for reports; this is for a number, quickly.
"""

from __future__ import annotations

from pathlib import Path

from emoverse.emt.manifest import read_manifest
from emoverse.model.checkpoint import hears
from emoverse.model.generation import AnswerGenerator, Budget, answer_rows
from emoverse.evaluation.scoring import score
from emoverse.media.cache import read_split


def objective(tasks: dict[str, dict]) -> float:
    """The mean over tasks of each task's primary metric: one number to maximise."""
    return sum(m[m["primary"]] for m in tasks.values()) / len(tasks) if tasks else 0.0


def flat_metrics(tasks: dict[str, dict]) -> dict[str, float]:
    """`{task}/{metric}` keys, as Ray and Tune report them."""
    return {f"{t}/{k}": float(v) for t, m in tasks.items() for k, v in m.items()
            if k != "primary"}


def validated_metrics(reported: dict) -> dict:
    """The validation part of what a stage reported to Ray (per-task keys and objective)."""
    return {k: v for k, v in reported.items() if "/" in k or k in ("objective", "validated")}


def validate(model_dir: str | Path, cache_dir: str | Path, manifest: str | Path, split: str,
             max_new_tokens: Budget, batch_size: int = 32, torch_threads: int = 1) -> dict:
    """Answer every usable clip of `split` and score it; returns flat metrics + objective.
    `max_new_tokens`: one budget, or one per task (rows are batched task by task)."""
    rows = read_split(cache_dir, split, ["sample_id", "task", "prompt"],
                      hears=hears(model_dir))
    if rows.empty:
        raise ValueError(f"the media cache {cache_dir} has no usable {split!r} clips")
    generator = AnswerGenerator(str(model_dir), max_new_tokens, torch_threads)
    preds = answer_rows(generator, rows, batch_size)
    tasks = score(read_manifest(manifest).to_pandas(), preds)
    return {**flat_metrics(tasks), "objective": objective(tasks), "validated": len(preds)}
