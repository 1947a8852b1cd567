"""CMU-MOSEI / CMU-MOSI / CH-SIMS as packaged by MMSA -> MSA (and MER) samples.

`label.csv`: video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode;
clips at `Raw/{video_id}/{clip_id}.mp4`. `label` is a sentiment score in [-3, 3]; both
Acc-2 conventions are available: `non-negative` (score < 0 vs >= 0) and `exclude-zero`
(< 0 vs > 0, zero scores rejected with that reason). The score is kept in `label_score`.
MER samples come from MOSEI's six emotion intensities when an emotions CSV is given
(video_id, clip_id, happy, sad, anger, surprise, disgust, fear): the strongest emotion,
or neutral when all are 0.
"""

from __future__ import annotations

from pathlib import Path

from emoverse.emt.sources.common import (Conversion, Rejection, RowError, SourceError,
                                         clean_text, media_file, read_csv, sample)

COLUMNS = ["video_id", "clip_id", "text", "label", "annotation", "mode"]
EMOTION_COLUMNS = ["video_id", "clip_id", "happy", "sad", "anger", "surprise", "disgust",
                   "fear"]
MODES = {"train": "train", "valid": "valid", "test": "test"}
EMOTION_CLASS = {"happy": "joy", "sad": "sadness", "anger": "anger", "surprise": "surprise",
                 "disgust": "disgust", "fear": "fear"}
CONVENTIONS = ("non-negative", "exclude-zero")


def clip_key(video_id: str, clip_id: str) -> str:
    return f"{video_id}/{clip_id}"


def read_emotions(path: Path) -> tuple[dict[str, str], list[Rejection]]:
    labels, rejections = {}, []
    for line, raw in read_csv(path, EMOTION_COLUMNS):
        try:
            scores = {c: float(raw[c]) for c in EMOTION_CLASS}
        except (TypeError, ValueError):
            rejections.append(Rejection("mmsa", f"{path.name}:{line}", "intensities",
                                        "emotion intensities must be numbers"))
            continue
        best = max(scores, key=scores.get)
        labels[clip_key(raw["video_id"].strip(), raw["clip_id"].strip())] = (
            EMOTION_CLASS[best] if scores[best] > 0 else "neutral")
    return labels, rejections


def convert(root: str | Path, source: str = "mosei", convention: str = "non-negative",
            emotions: str | Path | None = None, require_media: bool = True) -> Conversion:
    if convention not in CONVENTIONS:
        raise SourceError(f"unknown Acc-2 convention {convention!r}; use one of {CONVENTIONS}")
    root = Path(root)
    out = Conversion()
    mer, bad = read_emotions(Path(emotions)) if emotions else ({}, [])
    out.rejections += bad
    for line, raw in read_csv(root / "label.csv", COLUMNS):
        where = f"label.csv:{line}"
        try:
            rows, excluded = _samples(raw, root, source, convention, mer, require_media)
        except RowError as exc:
            out.rejections.append(Rejection(source, where, exc.field, str(exc)))
            continue
        if excluded:
            out.rejections.append(Rejection(source, where, "label", excluded))
        if rows:
            out.rows += rows
            key = clip_key(raw["video_id"].strip(), raw["clip_id"].strip())
            out.add_clip(key, rows[0], mer.get(key))
    return out


def _samples(raw: dict, root: Path, source: str, convention: str, mer: dict,
             require_media: bool) -> tuple[list[dict], str | None]:
    video, clip = (raw["video_id"] or "").strip(), (raw["clip_id"] or "").strip()
    if not video or not clip:
        raise RowError("video_id/clip_id", "empty id")
    split = MODES.get((raw["mode"] or "").strip().lower())
    if split is None:
        raise RowError("mode", f"unknown mode {raw['mode']!r} (train, valid or test)")
    try:
        score = float(raw["label"])
    except (TypeError, ValueError):
        raise RowError("label", f"sentiment score {raw['label']!r} is not a number") from None
    if not -3.0 <= score <= 3.0:
        raise RowError("label", f"sentiment score {score} outside [-3, 3]")
    text = clean_text(raw["text"], "text")
    media = media_file(root / "Raw" / video, f"{clip}.mp4", require_media)
    key = f"{split}-{video}-{clip}"
    rows = []
    if clip_key(video, clip) in mer:
        rows.append(sample("mer", f"{source}-mer-{key}", source, split, media, text,
                           label_class=mer[clip_key(video, clip)], label_score=score))
    if score == 0 and convention == "exclude-zero":
        return rows, "score 0 is excluded from MSA under the exclude-zero Acc-2 convention"
    rows.append(sample("msa", f"{source}-msa-{key}", source, split, media, text,
                       label_class="negative" if score < 0 else "positive", label_score=score))
    return rows, None
