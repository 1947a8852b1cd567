"""FER: facial expression recognition, answered as facial-action phrases.

The answer is a `; `-joined list of phrases (e.g. `Lip corners raised; Cheeks raised`),
built from OpenFace action units by `AU_PHRASES` below. Scoring treats a description as
a set of phrases: exact-set accuracy, and micro precision/recall/F1 over phrases.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .base import Answer, Task, most_common, normalize, unparsed_rate

# OpenFace action unit -> the phrase used in FER answers (FACS names, shortened).
AU_PHRASES = {
    "AU01": "Inner brows raised",
    "AU02": "Outer brows raised",
    "AU04": "Brows lowered",
    "AU05": "Upper lids raised",
    "AU06": "Cheeks raised",
    "AU07": "Eyes narrowing",
    "AU09": "Nose wrinkled",
    "AU10": "Upper lip raised",
    "AU12": "Lip corners raised",
    "AU14": "Dimples",
    "AU15": "Lip corners lowered",
    "AU17": "Chin raised",
    "AU20": "Lips stretched",
    "AU23": "Lips tightened",
    "AU25": "Lips parted",
    "AU26": "Jaw dropped",
    "AU45": "Blinking",
}
NEUTRAL_PHRASE = "Neutral face"
_KNOWN = {normalize(p): p for p in [*AU_PHRASES.values(), NEUTRAL_PHRASE]}


class ExpressionTask(Task):
    name = "fer"
    title = "Facial expression recognition"
    tag = "<expression>"
    instruction = "Describe the facial actions of the person in the video."
    primary_metric = "f1"
    speech_in_prompt = False

    def format_answer(self, gold: tuple[str, ...]) -> str:
        return "; ".join(gold) + "."

    def parse(self, text: str) -> Answer:
        parts = [normalize(p) for p in normalize(text).split(";")]
        if not any(parts):
            return Answer(text=text, error="empty facial-action description")
        unknown = [p for p in parts if p not in _KNOWN]
        if unknown:
            return Answer(text=text, error=f"unknown facial-action phrase(s): {unknown}")
        return Answer(text=text, value=tuple(sorted({_KNOWN[p] for p in parts})))

    def gold(self, row: Mapping) -> tuple[str, ...]:
        answer = self.parse(str(row["target"]))
        if not answer.ok:
            raise ValueError(f"fer target is not a facial-action description: {answer.error}")
        return answer.value

    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        if not golds:
            return {}
        tp = fp = fn = 0
        exact = 0
        for gold, ans in zip(golds, answers):
            pred = set(ans.value) if ans.ok else set()
            tp += len(pred & set(gold))
            fp += len(pred - set(gold))
            fn += len(set(gold) - pred)
            exact += pred == set(gold)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return {
            "accuracy": exact / len(golds),
            "precision": p,
            "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "unparsed": unparsed_rate(answers),
            "n": float(len(golds)),
        }

    def baseline(self, train_golds: Sequence[Any], eval_golds: Sequence[Any]) -> list[Any]:
        majority = most_common([tuple(g) for g in train_golds])
        return [majority for _ in eval_golds]


TASK = ExpressionTask()
