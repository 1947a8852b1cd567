"""MELD (declare-lab/MELD) `*_sent_emo.csv` -> MER and MSA samples.

Columns: Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
Season, Episode, StartTime, EndTime; clips are `dia{Dialogue_ID}_utt{Utterance_ID}.mp4`.
MSA is binary in M2SE, so utterances with neutral sentiment give MER samples only.

MELD's clips are already cut, so its time stamps never cut anything: a stamp that is
malformed, zero-length (test dia155_utt3) or reversed does not cost the benchmark a row.
It is reported as a notice, as is a clip whose length contradicts its stamps (probe.py).
"""

from __future__ import annotations

from pathlib import Path

from emoverse.emt.sources.common import (Conversion, Rejection, RowError, clean_text,
                                         media_file, parse_timestamp, read_csv, sample,
                                         split_from_name)
from emoverse.media.probe import stamp_notice
from emoverse.tasks.base import canonical_emotion

COLUMNS = ["Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "StartTime", "EndTime"]
SENTIMENTS = {"positive", "negative", "neutral"}


def clip_name(row: dict) -> str:
    return f"dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}.mp4"


def convert(csv_path: str | Path, clips: str | Path, split: str | None = None,
            require_media: bool = True) -> Conversion:
    csv_path, clips = Path(csv_path), Path(clips)
    split = split_from_name(csv_path, split)
    out = Conversion()
    for line, raw in read_csv(csv_path, COLUMNS):
        where = f"{csv_path.name}:{line}"
        try:
            rows = _samples(raw, clips, split, require_media)
            out.rows += rows
            notice = _stamp_notice(raw, rows[0]["media_path"], require_media)
            if notice:
                out.notices.append(Rejection("meld", where, *notice))
            out.add_clip(f"{split}-{clip_name(raw)[:-4]}", rows[0], rows[0]["label_class"])
        except RowError as exc:
            out.rejections.append(Rejection("meld", where, exc.field, str(exc)))
        except ValueError as exc:  # non-numeric ids
            out.rejections.append(Rejection("meld", where, "Dialogue_ID/Utterance_ID", str(exc)))
    return out


def _samples(raw: dict, clips: Path, split: str, require_media: bool) -> list[dict]:
    text = clean_text(raw["Utterance"], "Utterance")
    emotion = canonical_emotion(raw["Emotion"] or "")
    if emotion is None:
        raise RowError("Emotion", f"unknown emotion {raw['Emotion']!r}")
    sentiment = (raw["Sentiment"] or "").strip().lower()
    if sentiment not in SENTIMENTS:
        raise RowError("Sentiment", f"unknown sentiment {raw['Sentiment']!r}")
    name = clip_name(raw)
    media = media_file(clips, name, require_media)
    key = f"{split}-{name[:-4]}"
    rows = [sample("mer", f"meld-mer-{key}", "meld", split, media, text, label_class=emotion)]
    if sentiment != "neutral":
        rows.append(sample("msa", f"meld-msa-{key}", "meld", split, media, text,
                           label_class=sentiment))
    return rows


def _stamp_notice(raw: dict, media: str, probe: bool) -> tuple[str, str] | None:
    """(field, reason) when the stamps are unusable or contradict the clip, else None."""
    try:
        start = parse_timestamp(raw["StartTime"], "StartTime")
        end = parse_timestamp(raw["EndTime"], "EndTime")
    except RowError as exc:
        return exc.field, f"{exc}; kept (MELD clips are not cut by time)"
    if end <= start:
        kind = "zero-length" if end == start else "reversed"
        return "EndTime", (f"{kind} time stamps ({raw['StartTime']} to {raw['EndTime']}); "
                           "kept (MELD clips are not cut by time)")
    reason = stamp_notice(media, end - start) if probe else None
    return ("media_path", reason) if reason else None
