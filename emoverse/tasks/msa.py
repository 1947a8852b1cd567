"""MSA: multimodal sentiment analysis, answered `Positive.` or `Negative.`

Scored as the MSA benchmarks do: accuracy, weighted F1 and per-class accuracy of the
binary answer; and, where the gold sentiment score is known (CMU-MOSEI/MOSI/CH-SIMS keep
it in [-3, 3]), Acc-2 under both conventions: negative (<0) vs non-negative (>=0), and
negative vs positive with zero scores excluded. Acc-7, MAE and correlation need a score
prediction; M2SE answers a class, so they are not computed.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .base import Answer, Task, classification_scores, parse_choice

CLASSES = ("negative", "positive")


class Sentiment(str):
    """A gold sentiment class that also carries its source score (None when unknown)."""

    score: float | None

    def __new__(cls, label: str, score: float | None = None):
        obj = super().__new__(cls, label)
        obj.score = score
        return obj


def acc2(golds: Sequence[Any], preds: Sequence[str | None], exclude_zero: bool) -> float | None:
    """Binary accuracy against the gold scores' signs; None without scores to judge."""
    pairs = [(g.score, p) for g, p in zip(golds, preds)
             if getattr(g, "score", None) is not None and not (exclude_zero and g.score == 0)]
    if not pairs:
        return None
    return sum(p == ("negative" if s < 0 else "positive") for s, p in pairs) / len(pairs)


class SentimentTask(Task):
    name = "msa"
    title = "Multimodal sentiment analysis"
    tag = "<sentiment>"
    instruction = "What is the sentiment of the person in the video? Answer Positive or Negative."
    primary_metric = "accuracy"
    answer_budget = 8
    classes = CLASSES

    def format_answer(self, gold: str) -> str:
        return f"{gold.capitalize()}."

    def parse(self, text: str) -> Answer:
        return parse_choice(text, {c: c for c in CLASSES})

    def gold(self, row: Mapping) -> Sentiment:
        label = str(row["label_class"]).lower()
        if label not in CLASSES:
            raise ValueError(f"msa label must be one of {CLASSES}, got {label!r}")
        score = row.get("label_score") if hasattr(row, "get") else None
        return Sentiment(label, None if score is None or score != score else float(score))

    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        scores = classification_scores(golds, answers)
        for c in CLASSES:  # per-class accuracy (recall), as the paper reports it
            idx = [i for i, g in enumerate(golds) if g == c]
            if idx:
                scores[f"accuracy_{c}"] = sum(answers[i].value == c for i in idx) / len(idx)
        preds = [a.value if a.ok else None for a in answers]
        for name, exclude in (("acc2_non_negative", False), ("acc2_exclude_zero", True)):
            value = acc2(golds, preds, exclude)
            if value is not None:
                scores[name] = value
        return scores

    def answer_fields(self, value: str) -> dict:
        return {"label": value}


TASK = SentimentTask()
