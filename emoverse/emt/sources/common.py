"""What every converter shares: rejections, time stamps, text checks, row assembly."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from emoverse.tasks import get_task

SPLIT_NAMES = {"train": "train", "dev": "valid", "valid": "valid", "val": "valid",
               "test": "test"}


class SourceError(ValueError):
    """An input that cannot be converted at all (missing file, wrong columns)."""


@dataclass(frozen=True)
class Rejection:
    source: str
    row: str  # where in the input: "file:line" or an id
    field: str
    reason: str


@dataclass
class Conversion:
    rows: list[dict] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    # rows kept but worth a look (a mis-cut clip, a zero-length stamp): same fields
    notices: list[Rejection] = field(default_factory=list)
    # clip key -> the clip's media, speech, split and emotion, for FER/ERI add-ons
    clips: dict[str, dict] = field(default_factory=dict)

    def merge(self, other: "Conversion") -> None:
        self.rows += other.rows
        self.rejections += other.rejections
        self.notices += other.notices
        self.clips.update(other.clips)

    def add_clip(self, key: str, row: dict, emotion: str | None = None) -> None:
        self.clips.setdefault(key, {k: row[k] for k in (
            "media_path", "media_start", "media_end", "transcript", "split", "source")})
        if emotion:
            self.clips[key]["emotion"] = emotion


class RowError(ValueError):
    """One input row is unusable; `field` names the culprit."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field = field_name


_STAMP = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})[,.](\d{1,3})$")


def parse_timestamp(text: str, field_name: str) -> float:
    """`H:MM:SS,mmm` or `HH:MM:SS.mmm` to seconds."""
    m = _STAMP.match(str(text).strip())
    if not m:
        raise RowError(field_name, f"malformed time stamp {text!r} (want HH:MM:SS,mmm)")
    h, mi, s, ms = m.groups()
    if int(mi) > 59 or int(s) > 59:
        raise RowError(field_name, f"malformed time stamp {text!r}")
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def clean_text(text: str | None, field_name: str, allow_empty: bool = False) -> str:
    """Strip and collapse white space; reject undecodable bytes and empty text."""
    value = re.sub(r"\s+", " ", text or "").strip()
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raise RowError(field_name, "text is not valid UTF-8")
    if not value and not allow_empty:
        raise RowError(field_name, "empty text")
    return value


def read_csv(path: Path, required: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs; header names are stripped; missing columns fail early."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    # surrogateescape keeps undecodable bytes so the row, not the file, is rejected
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}; found {header}")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def split_from_name(path: Path, explicit: str | None = None) -> str:
    """The split named explicitly, or the one a file name carries (train/dev/test)."""
    if explicit:
        return SPLIT_NAMES.get(explicit, explicit)
    for word, split in SPLIT_NAMES.items():
        if re.search(rf"(^|[_\-.]){word}([_\-.]|$)", path.stem.lower()):
            return split
    raise SourceError(f"{path}: cannot tell the split from the file name; pass --split")


def media_file(clips: Path, name: str, require: bool) -> str:
    path = clips / name
    if require and not path.is_file():
        raise RowError("media_path", f"clip {path} does not exist")
    return str(path)


def clip_sample(task: str, source: str, key: str, clip: dict, transcript: str,
                **fields) -> dict:
    """A sample for a task added on top of an already converted clip (FER, ERI)."""
    return sample(task, f"{source}-{task}-{clip['split']}-{key.replace('/', '-')}", source,
                  clip["split"], clip["media_path"], transcript,
                  media_start=clip["media_start"], media_end=clip["media_end"], **fields)


def sample(task: str, sample_id: str, source: str, split: str, media_path: str,
           transcript: str = "", **fields) -> dict:
    """A manifest row for `task` with its prompt and target filled in from the label."""
    spec = get_task(task)
    row = dict(sample_id=sample_id, task=task, source=source, split=split,
               media_path=media_path, transcript=transcript, context=None,
               target_utterance=None, label_class=None, label_score=None, label_pairs=None,
               media_start=None, media_end=None, peak_frame=None)
    row.update(fields)
    row["prompt"] = spec.prompt(transcript, row["context"], row["target_utterance"])
    if "target" not in fields:
        row["target"] = spec.format_answer(spec.gold({**row, "target": ""}))
    return row
