"""ERI rationales as JSONL (`{"id": CLIP_KEY, "explanation": TEXT}` per line) -> ERI samples.

`id` names a clip of the converted source (MELD: `{split}-dia{D}_utt{U}`; MMSA:
`{video_id}/{clip_id}`); the ERI sample takes that clip's media, speech and emotion.
"""

from __future__ import annotations

import json
from pathlib import Path

from emoverse.emt.sources.common import Conversion, Rejection, SourceError, clip_sample


def add_eri(conv: Conversion, jsonl: str | Path, source: str) -> Conversion:
    path = Path(jsonl)
    if not path.is_file():
        raise SourceError(f"{path}: no such rationale file")
    for line_no, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path.name}:{line_no}"
        if not raw.strip():
            continue
        try:
            item = json.loads(raw.decode("utf-8"))
            key, text = str(item["id"]), " ".join(str(item["explanation"]).split())
        except UnicodeDecodeError:
            conv.rejections.append(Rejection(source, where, "explanation", "not UTF-8"))
            continue
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            conv.rejections.append(Rejection(source, where, "line",
                                             f"not a JSON object with id and explanation: {exc}"))
            continue
        clip = conv.clips.get(key)
        if clip is None:
            conv.rejections.append(Rejection(source, where, "id", f"no converted clip {key!r}"))
            continue
        if not text:
            conv.rejections.append(Rejection(source, where, "explanation", "empty explanation"))
            continue
        conv.rows.append(clip_sample("eri", source, key, clip, clip["transcript"],
                                     label_class=clip.get("emotion"), target=text))
    return conv
