"""Build an EMT manifest from a public corpus, with a rejection report.

`emoverse emt build --source KIND --root DIR --out MANIFEST [...]`

Rows that cannot be used are never dropped silently: each becomes a line of
`<manifest>.rejections.csv` (source, row, field, reason) and the build goes on. Rows kept
despite a defect in the corpus (a clip whose length contradicts its time stamps, a
zero-length stamp where stamps cut nothing) are listed in `<manifest>.notices.csv`.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from emoverse.emt.manifest import write_manifest
from emoverse.emt.sources import ecf, meld, mmsa
from emoverse.emt.sources.common import Conversion, Rejection, SourceError
from emoverse.emt.sources.openface import add_fer
from emoverse.emt.sources.rationales import add_eri
from emoverse.tasks import get_task

SOURCES = ("mosei", "mosi", "sims", "meld", "ecf")
DEFAULT_INPUTS = {"meld": "*sent_emo*.csv", "ecf": "*.json"}


@dataclass
class BuildOptions:
    source: str
    root: Path
    inputs: list[Path] = field(default_factory=list)  # MELD CSVs / ECF JSON files
    split: str | None = None
    clips: Path | None = None  # per-utterance clips (MELD, ECF); default: root
    episodes: Path | None = None  # ECF: episode files, media as time spans
    acc2: str = "non-negative"
    emotions: Path | None = None  # MOSEI emotion intensities CSV -> MER
    openface: Path | None = None  # OpenFace CSVs per clip -> FER
    rationales: Path | None = None  # ERI explanations JSONL -> ERI
    require_media: bool = True


def _inputs(opts: BuildOptions) -> list[Path]:
    if opts.inputs:
        return opts.inputs
    found = sorted(opts.root.glob(DEFAULT_INPUTS[opts.source]))
    if not found:
        raise SourceError(f"{opts.root}: no {DEFAULT_INPUTS[opts.source]} files; pass --input")
    return found


def convert(opts: BuildOptions) -> Conversion:
    """Run the converters and add-ons the options ask for."""
    if opts.source not in SOURCES:
        raise SourceError(f"unknown source {opts.source!r}; one of {', '.join(SOURCES)}")
    clips = opts.clips or opts.root
    out = Conversion()
    if opts.source in ("mosei", "mosi", "sims"):
        out = mmsa.convert(opts.root, opts.source, opts.acc2, opts.emotions, opts.require_media)
    elif opts.source == "meld":
        for path in _inputs(opts):
            out.merge(meld.convert(path, clips, opts.split, opts.require_media))
    else:
        for path in _inputs(opts):
            out.merge(ecf.convert(path, clips, opts.split, opts.episodes, opts.require_media))
    if opts.openface:
        add_fer(out, opts.openface, opts.source)
    if opts.rationales:
        add_eri(out, opts.rationales, opts.source)
    return _drop_duplicates(out)


def _drop_duplicates(conv: Conversion) -> Conversion:
    seen, rows = set(), []
    for row in conv.rows:
        if row["sample_id"] in seen:
            conv.rejections.append(Rejection(row["source"], row["sample_id"], "sample_id",
                                             "duplicate id; the first occurrence was kept"))
            continue
        seen.add(row["sample_id"])
        rows.append(row)
    conv.rows = rows
    return conv


def _report_path(manifest: str | Path, kind: str) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.{kind}.csv")


def rejections_path(manifest: str | Path) -> Path:
    return _report_path(manifest, "rejections")


def notices_path(manifest: str | Path) -> Path:
    return _report_path(manifest, "notices")


def _write_report(entries: list[Rejection], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "row", "field", "reason"])
        writer.writeheader()
        writer.writerows(asdict(r) for r in entries)


def build(opts: BuildOptions, out: str | Path) -> tuple[Path, Conversion]:
    """Convert, write the manifest, the rejection report and the notices; returns both."""
    conv = convert(opts)
    report = rejections_path(out)
    _write_report(conv.rejections, report)
    _write_report(conv.notices, notices_path(out))
    if not conv.rows:
        raise SourceError(f"no usable rows from {opts.root}; every row was rejected "
                          f"(see {report})")
    return write_manifest(conv.rows, out), conv


def stats(manifest: pd.DataFrame) -> str:
    """Counts per task/source/split, and per label (`Task.label_summary`) for each task."""
    from tabulate import tabulate

    counts = manifest.groupby(["task", "source", "split"]).size().reset_index(name="samples")
    lines = ["samples per task, source and split:",
             tabulate(counts.values.tolist(), headers=list(counts.columns)), "labels:"]
    for task, group in manifest.groupby("task"):
        labels = Counter(get_task(task).label_summary(row) for row in group.to_dict("records"))
        body = ", ".join(f"{k} {v}" for k, v in labels.most_common())
        lines.append(f"  {task}: {body}")
    lines.append(f"total: {len(manifest)}")
    return "\n".join(lines)
