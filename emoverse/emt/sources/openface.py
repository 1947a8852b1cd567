"""OpenFace 2.x `FeatureExtraction` CSVs -> FER samples and peak-expression frames.

One CSV per clip (rows are frames: frame, face_id, timestamp, confidence, success, ...,
AU intensities `AUxx_r` in 0-5 and presences `AUxx_c`; names may carry a leading space).
The peak frame is the successfully tracked frame with the largest summed AU intensity.
The FER answer names the action units at that frame with intensity >= `threshold`
(and present, where presence columns exist), strongest first, at most `max_phrases`,
using `emoverse.tasks.fer.AU_PHRASES`; a face with none is a "Neutral face".
"""

from __future__ import annotations

from pathlib import Path

from emoverse.emt.sources.common import (Conversion, Rejection, RowError, SourceError,
                                         clip_sample, read_csv)
from emoverse.tasks.fer import AU_PHRASES, NEUTRAL_PHRASE

REQUIRED = ["frame", "success", "confidence"]


def describe(path: Path, threshold: float = 1.0, max_phrases: int = 3) -> tuple[tuple, int]:
    """(facial-action phrases, 0-based peak frame index) of one OpenFace CSV."""
    best, best_total = None, -1.0
    intensity_cols = None
    for index, (_, row) in enumerate(read_csv(path, REQUIRED)):
        if intensity_cols is None:
            intensity_cols = [c for c in row if c.endswith("_r") and c[:-2] in AU_PHRASES]
            if not intensity_cols:
                raise SourceError(f"{path}: no AU intensity columns (AU01_r ... AU45_r)")
        try:
            ok = float(row["success"]) == 1.0
            values = {c[:-2]: float(row[c]) for c in intensity_cols}
            present = {c[:-2]: float(row[f"{c[:-2]}_c"]) == 1.0 for c in intensity_cols
                       if f"{c[:-2]}_c" in row}
        except (TypeError, ValueError):
            raise RowError("AU columns", f"{path.name}: frame {index} has non-numeric values")
        if ok and sum(values.values()) > best_total:
            best_total, best = sum(values.values()), (index, values, present)
    if best is None:
        raise RowError("success", f"{path.name}: no successfully tracked frame")
    index, values, present = best
    active = [au for au, v in sorted(values.items(), key=lambda kv: -kv[1])
              if v >= threshold and present.get(au, True)][:max_phrases]
    phrases = tuple(sorted(AU_PHRASES[au] for au in active)) or (NEUTRAL_PHRASE,)
    return phrases, index


def add_fer(conv: Conversion, openface_dir: str | Path, source: str,
            threshold: float = 1.0) -> Conversion:
    """FER samples for every converted clip that has `{clip key}.csv` under the directory."""
    root = Path(openface_dir)
    if not root.is_dir():
        raise SourceError(f"{root}: no such OpenFace directory")
    for key, clip in conv.clips.items():
        path = root / f"{key}.csv"
        if not path.is_file():
            conv.rejections.append(Rejection(source, key, "openface",
                                             f"no OpenFace CSV at {path}"))
            continue
        try:
            phrases, peak = describe(path, threshold)
        except (RowError, SourceError) as exc:
            conv.rejections.append(Rejection(source, key, getattr(exc, "field", "openface"),
                                             str(exc)))
            continue
        conv.rows.append(clip_sample("fer", source, key, clip, "", peak_frame=peak,
                                     target="; ".join(phrases) + "."))
    return conv
