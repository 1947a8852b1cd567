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
PHRASES = (*AU_PHRASES.values(), NEUTRAL_PHRASE)
_KNOWN = {normalize(p): p for p in PHRASES}


class ExpressionTask(Task):
    name = "fer"
    title = "Facial expression recognition"
    tag = "<expression>"
    instruction = "Describe the facial actions of the person in the video."
    primary_metric = "f1"
    answer_budget = 24
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
        """Exact-set accuracy, and micro P/R/F1 over phrases (sklearn, multi-label)."""
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support
        from sklearn.preprocessing import MultiLabelBinarizer

        if not golds:
            return {}
        binarize = MultiLabelBinarizer(classes=PHRASES).fit([])
        gold = binarize.transform([set(g) for g in golds])
        pred = binarize.transform([set(a.value) if a.ok else set() for a in answers])
        p, r, f, _ = precision_recall_fscore_support(gold, pred, average="micro",
                                                     zero_division=0)
        return {
            "accuracy": float(accuracy_score(gold, pred)),  # subset accuracy: the exact set
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "unparsed": unparsed_rate(answers),
            "n": float(len(golds)),
        }

    def answer_fields(self, value: tuple[str, ...]) -> dict:
        return {"labels": list(value)}

    def label_summary(self, row: Mapping) -> str:
        return str(row["target"])

    def baseline(self, train_golds: Sequence[Any], eval_golds: Sequence[Any]) -> list[Any]:
        majority = most_common([tuple(g) for g in train_golds])
        return [majority for _ in eval_golds]


TASK = ExpressionTask()
