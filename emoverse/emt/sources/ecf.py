"""ECF 2.0 / SemEval-2024 Task 3 subtask 2 JSON -> ECPE samples.

One sample per utterance of every conversation: the prompt lists the whole conversation
with gold emotions (`N_emotion.`) and names the target utterance; the answer lists the
target's emotion-cause pairs (empty when it has none). Media is the target utterance's
clip (`video_name`), or with `episodes` its span of the episode file.
"""

from __future__ import annotations

import json
from pathlib import Path

from emoverse.emt.sources.common import (Conversion, Rejection, RowError, SourceError,
                                         clean_text, media_file, parse_timestamp, sample,
                                         split_from_name)
from emoverse.media.probe import stamp_notice
from emoverse.tasks.base import canonical_emotion


def _load(path: Path) -> list[dict]:
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a list of conversations")
    return data


def _pairs(conv: dict) -> list[dict]:
    pairs = []
    for pair in conv.get("emotion-cause_pairs", []):
        try:
            utt, emotion = str(pair[0]).split("_", 1)
            pairs.append({"emotion_utterance": int(utt), "emotion": canonical_emotion(emotion),
                          "cause_utterance": int(pair[1])})
        except (ValueError, IndexError, TypeError) as exc:
            raise RowError("emotion-cause_pairs", f"malformed pair {pair!r}") from exc
        if pairs[-1]["emotion"] is None:
            raise RowError("emotion-cause_pairs", f"unknown emotion in pair {pair!r}")
    return pairs


def _context(conv: dict) -> list[dict]:
    context = []
    for i, utt in enumerate(conv.get("conversation") or [], start=1):
        if int(utt.get("utterance_ID", -1)) != i:
            raise RowError("utterance_ID", f"utterance {i} is numbered {utt.get('utterance_ID')}")
        emotion = canonical_emotion(utt.get("emotion") or "")
        if emotion is None:
            raise RowError("emotion", f"utterance {i}: unknown emotion {utt.get('emotion')!r}")
        context.append({"speaker": clean_text(utt.get("speaker"), "speaker"),
                        "text": clean_text(utt.get("text"), "text"), "emotion": emotion})
    if not context:
        raise RowError("conversation", "empty conversation")
    return context


def _media(utt: dict, clips: Path, episodes: Path | None, require: bool) -> dict:
    if episodes is None:  # cut clips: the span is only checked against the clip's length
        return {"media_path": media_file(clips, utt["video_name"], require)}
    episode, start, end = utt["video_source"]
    begin, finish = parse_timestamp(start, "video_source"), parse_timestamp(end, "video_source")
    if finish <= begin:
        raise RowError("video_source", f"span {start}-{end} ends before it starts")
    return {"media_path": media_file(episodes, f"{episode}.mp4", require),
            "media_start": begin, "media_end": finish}


def convert(json_path: str | Path, clips: str | Path, split: str | None = None,
            episodes: str | Path | None = None, require_media: bool = True) -> Conversion:
    json_path, clips = Path(json_path), Path(clips)
    split = split_from_name(json_path, split)
    episodes = Path(episodes) if episodes else None
    out = Conversion()
    for conv in _load(json_path):
        cid = conv.get("conversation_ID")
        try:
            context, pairs = _context(conv), _pairs(conv)
            rows = []
            for k, utt in enumerate(conv["conversation"], start=1):
                mine = [p for p in pairs if p["emotion_utterance"] == k]
                rows.append(sample(
                    "ecpe", f"ecf-ecpe-{split}-{cid}-{k}", "ecf", split,
                    transcript=context[k - 1]["text"], context=context, target_utterance=k,
                    label_class=context[k - 1]["emotion"], label_pairs=mine,
                    **_media(utt, clips, episodes, require_media)))
            out.rows += rows
            if episodes is None and require_media:
                out.notices += _clip_notices(conv, rows)
        except RowError as exc:
            out.rejections.append(Rejection("ecf", f"conversation {cid}", exc.field, str(exc)))
        except (KeyError, TypeError, ValueError) as exc:
            out.rejections.append(Rejection("ecf", f"conversation {cid}", "conversation",
                                            f"malformed conversation: {exc!r}"))
    return out


def _clip_notices(conv: dict, rows: list[dict]) -> list[Rejection]:
    """Cut clips whose length contradicts their utterance's span (probe.py has the rule)."""
    notices = []
    for k, (utt, row) in enumerate(zip(conv["conversation"], rows), start=1):
        try:
            _, start, end = utt["video_source"]
            span = parse_timestamp(end, "video_source") - parse_timestamp(start, "video_source")
        except (RowError, ValueError, TypeError):
            continue  # the span cuts nothing here, and the clip is what the model sees
        reason = stamp_notice(row["media_path"], span)
        if reason:
            notices.append(Rejection("ecf", f"conversation {conv.get('conversation_ID')} "
                                     f"utterance {k}", "video_source", reason))
    return notices
