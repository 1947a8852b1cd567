"""ERI: emotion reason inference, a free-text explanation of the emotion and its cause.

Scored two ways: whether the explanation names the gold emotion (the first emotion word
it mentions), and token-level F1 overlap with the reference explanation.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Mapping, Sequence

from .base import (EMOTION_ALIASES, EMOTIONS, Answer, Task, canonical_emotion, most_common,
                   unparsed_rate)

_EMOTION_WORDS = re.compile(r"\b(" + "|".join([*EMOTIONS, *EMOTION_ALIASES]) + r")\b", re.I)


def named_emotion(text: str) -> str | None:
    """The first emotion word in `text`, as a class name."""
    m = _EMOTION_WORDS.search(text)
    return canonical_emotion(m.group(1)) if m else None


def token_f1(pred: str, ref: str) -> float:
    p, r = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", ref.lower())
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


class ReasonTask(Task):
    name = "eri"
    title = "Emotion reason inference"
    tag = "<reason>"
    instruction = "What emotion does the person feel, and why? Explain briefly."
    primary_metric = "emotion_accuracy"
    answer_budget = 96

    def format_answer(self, gold: Mapping) -> str:
        return gold["text"]

    def parse(self, text: str) -> Answer:
        clean = re.sub(r"\s+", " ", text).strip()
        if not clean:
            return Answer(text=text, error="empty explanation")
        return Answer(text=text, value={"text": clean, "emotion": named_emotion(clean)})

    def gold(self, row: Mapping) -> dict:
        emotion = canonical_emotion(str(row["label_class"] or ""))
        return {"text": str(row["target"]), "emotion": emotion}

    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        if not golds:
            return {}
        hits = [a.ok and a.value["emotion"] == g["emotion"] for g, a in zip(golds, answers)]
        f1s = [token_f1(a.value["text"], g["text"]) if a.ok else 0.0
               for g, a in zip(golds, answers)]
        return {
            "emotion_accuracy": sum(hits) / len(golds),
            "token_f1": sum(f1s) / len(golds),
            "unparsed": unparsed_rate(answers),
            "n": float(len(golds)),
        }

    def answer_fields(self, value: Mapping) -> dict:
        return {"text": value["text"], "emotion": value["emotion"]}

    def baseline(self, train_golds: Sequence[Any], eval_golds: Sequence[Any]) -> list[Any]:
        text = most_common([g["text"] for g in train_golds])
        return [{"text": text, "emotion": named_emotion(text)} for _ in eval_golds]


TASK = ReasonTask()
