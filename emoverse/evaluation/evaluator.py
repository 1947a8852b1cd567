"""`emoverse eval --model DIR_OR_RUN [--manifest M] [--tasks T ...] [--out DIR]`

Evaluate a model on a manifest's split: the media stage (cached), greedy generation on a
Ray Data actor pool (every row exactly once), parsing, the benchmarks' metrics, the
majority baselines, and a report (metrics.json with the model, manifest and recipe
hashes, per-sample predictions, figures). Greedy decoding over a fixed row order makes a
re-run, after an interruption or not, give identical numbers; the report is written
atomically, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emoverse.emt.manifest import manifest_hash, read_manifest
from emoverse.evaluation.report import METRICS, write_report
from emoverse.evaluation.scoring import baselines, score
from emoverse.model.checkpoint import (LINEAGE, is_checkpoint, load_processor, parent_of,
                                       read_lineage)
from emoverse.recipe import EvalConfig, MediaConfig


@dataclass(frozen=True)
class EvalRequest:
    model: Path  # a stage checkpoint or Hugging Face model directory
    manifest: Path
    out: Path
    media: MediaConfig
    cache_root: Path
    config: EvalConfig = EvalConfig()
    tasks: tuple[str, ...] | None = None  # None: every task the split has
    num_actors: int = 1
    previous: Path | None = None  # an earlier evaluation to draw beside this one


def model_hash(path: str | Path) -> str:
    """A content hash of a model directory: configs in full, and for each weight file its
    name, size and first MiB (hashing gigabytes of weights would take longer than the
    evaluation of a small split). An adapter's hash includes its parent's."""
    digest = hashlib.sha256()
    if is_checkpoint(path) and (Path(path) / "adapter").is_dir():
        parent = parent_of(path)
        digest.update((model_hash(parent) if Path(parent).exists() else parent).encode())
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != LINEAGE):
        digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            data = fh.read() if f.suffix in (".json", ".txt", ".jinja") else fh.read(2**20)
        digest.update(str(f.stat().st_size).encode() + data)
    return digest.hexdigest()[:16]


def answer_budget(manifest: pd.DataFrame, model_path: str | Path, split: str) -> int:
    """Enough new tokens for the longest target of the split, plus a margin."""
    tokenizer = load_processor(model_path).tokenizer
    targets = manifest[manifest.split == split].target.tolist()
    return max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets) + 4


def evaluate(req: EvalRequest) -> dict:
    """Run the evaluation of `req` and write its report to `req.out`; returns the metrics."""
    from emoverse.distributed.inference import predict
    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.session import ensure_ray

    manifest = read_manifest(req.manifest).to_pandas()
    split = req.config.split
    present = set(manifest[manifest.split == split].task)
    tasks = tuple(t for t in (req.tasks or sorted(present)))
    missing = [t for t in tasks if t not in present]
    if missing or not tasks:
        raise ValueError(f"manifest {req.manifest} has no {split!r} samples of "
                         f"{', '.join(missing) or 'any task'}")
    previous = json.loads((req.previous / METRICS).read_text()) if req.previous else None
    ensure_ray()
    cache = run_media_stage(req.manifest, req.media, req.cache_root)
    budget = req.config.max_new_tokens or answer_budget(manifest, req.model, split)
    preds = predict(cache, req.model, split, budget, req.config.batch_size, req.num_actors,
                    tasks=tasks)
    preds = preds.sort_values("sample_id").reset_index(drop=True)
    ids = preds.groupby("task").sample_id.apply(list).to_dict()
    lineage = read_lineage(req.model) if is_checkpoint(req.model) else {}
    metrics = {
        "model": str(req.model), "model_hash": model_hash(req.model),
        "recipe_hash": lineage.get("recipe"), "stage": lineage.get("stage"),
        "manifest": str(req.manifest), "manifest_hash": manifest_hash(req.manifest),
        "split": split, "max_new_tokens": budget, "decoding": "greedy",
        "media": req.media.model_dump(),
        "tasks": score(manifest, preds),
        "unparsed_counts": _unparsed_counts(preds),
        "baseline": baselines(manifest, ids),
    }
    if previous:
        previous.setdefault("label", str(req.previous))
    write_report(req.out, metrics, preds, manifest, previous)
    if is_checkpoint(req.model):  # the checkpoint's lineage records its evaluation too
        _record_in_lineage(Path(req.model), split, metrics["tasks"])
    return metrics


def _unparsed_counts(preds: pd.DataFrame) -> dict[str, int]:
    from emoverse.tasks import get_task

    return {t: int(sum(not get_task(t).parse(p).ok for p in group.prediction))
            for t, group in preds.groupby("task")}


def _record_in_lineage(checkpoint: Path, split: str, tasks: dict) -> None:
    lineage = read_lineage(checkpoint)
    lineage.setdefault("evaluations", {})[split] = {
        t: {"primary": m["primary"], m["primary"]: m[m["primary"]]} for t, m in tasks.items()}
    (checkpoint / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True))
