"""The EMT manifest: one Parquet row per instruction sample, with an explicit schema.

Every row names its task, source corpus and split, where its media is (a clip file, or
an episode file with start/end seconds), the speech and conversation it comes with, the
prompt, the target answer, and the structured label the metrics need. The file carries
its schema version in the Parquet metadata; rows are validated on write and on read and
errors name the row and the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from emoverse.tasks import TASK_NAMES, get_task

SCHEMA_VERSION = "emt/1"
SPLITS = ("train", "valid", "test")

UTTERANCE = pa.struct([("speaker", pa.string()), ("text", pa.string()), ("emotion", pa.string())])
PAIR = pa.struct([("emotion_utterance", pa.int32()), ("emotion", pa.string()),
                  ("cause_utterance", pa.int32())])

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("media_path", pa.string(), nullable=False),
        pa.field("media_start", pa.float64()),  # seconds into media_path; null = whole file
        pa.field("media_end", pa.float64()),
        pa.field("peak_frame", pa.int32()),  # OpenFace peak-expression frame, if known
        pa.field("transcript", pa.string(), nullable=False),
        pa.field("context", pa.list_(UTTERANCE)),  # conversation (ECPE)
        pa.field("target_utterance", pa.int32()),  # 1-based, into context (ECPE)
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("label_class", pa.string()),
        pa.field("label_score", pa.float64()),
        pa.field("label_pairs", pa.list_(PAIR)),
    ],
    metadata={b"emoverse.manifest": SCHEMA_VERSION.encode()},
)
REQUIRED = [f.name for f in SCHEMA if not f.nullable]
MAY_BE_EMPTY = {"transcript", "target"}  # FER has no speech; ECPE answers "" for no pairs


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, row and field."""


def validate_row(row: Mapping, index: int) -> None:
    """Raise ManifestError naming row `index` and the field at fault."""
    where = f"row {index} (sample_id={row.get('sample_id')!r})"
    for name in REQUIRED:
        if row.get(name) is None or (name not in MAY_BE_EMPTY and row.get(name) == ""):
            raise ManifestError(f"{where}: field {name!r} is missing or empty")
    if row["task"] not in TASK_NAMES:
        raise ManifestError(f"{where}: field 'task' is {row['task']!r}, not one of {TASK_NAMES}")
    if row["split"] not in SPLITS:
        raise ManifestError(f"{where}: field 'split' is {row['split']!r}, not one of {SPLITS}")
    start, end = row.get("media_start"), row.get("media_end")
    if (start is None) != (end is None) or (start is not None and not 0 <= start < end):
        raise ManifestError(f"{where}: fields 'media_start'/'media_end' ({start}, {end}) "
                            "must both be null or satisfy 0 <= start < end")
    try:
        get_task(row["task"]).gold(row)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ManifestError(f"{where}: label fields do not fit task {row['task']!r}: {exc}") from exc


def validate_rows(rows: list[Mapping]) -> None:
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        validate_row(row, i)
        if row["sample_id"] in seen:
            raise ManifestError(f"row {i}: field 'sample_id' {row['sample_id']!r} duplicates "
                                f"row {seen[row['sample_id']]}")
        seen[row["sample_id"]] = i


def write_manifest(rows: Iterable[Mapping], path: str | Path) -> Path:
    """Validate `rows` and write them as a manifest Parquet file."""
    rows = [{f.name: r.get(f.name) for f in SCHEMA} for r in rows]
    validate_rows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def read_manifest(path: str | Path) -> pa.Table:
    """Read and validate a manifest; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a Parquet file ({exc})") from exc
    version = (table.schema.metadata or {}).get(b"emoverse.manifest", b"").decode()
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path}: manifest version {version or 'missing'!r}, "
                            f"expected {SCHEMA_VERSION!r}")
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}")
    try:
        validate_rows(table.to_pylist())
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    return table.select([f.name for f in SCHEMA]).cast(SCHEMA)


def manifest_hash(path: str | Path) -> str:
    """Content hash of a manifest file, used in cache keys and lineage."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
