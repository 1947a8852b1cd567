"""MSA: multimodal sentiment analysis, answered `Positive.` or `Negative.`"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .base import Answer, Task, classification_scores, parse_choice

CLASSES = ("negative", "positive")


class SentimentTask(Task):
    name = "msa"
    title = "Multimodal sentiment analysis"
    tag = "<sentiment>"
    instruction = "What is the sentiment of the person in the video? Answer Positive or Negative."
    primary_metric = "accuracy"

    def format_answer(self, gold: str) -> str:
        return f"{gold.capitalize()}."

    def parse(self, text: str) -> Answer:
        return parse_choice(text, {c: c for c in CLASSES})

    def gold(self, row: Mapping) -> str:
        label = str(row["label_class"]).lower()
        if label not in CLASSES:
            raise ValueError(f"msa label must be one of {CLASSES}, got {label!r}")
        return label

    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        scores = classification_scores(golds, answers, CLASSES)
        for c in CLASSES:  # per-class accuracy (recall), as the paper reports it
            idx = [i for i, g in enumerate(golds) if g == c]
            if idx:
                scores[f"accuracy_{c}"] = sum(answers[i].value == c for i in idx) / len(idx)
        return scores


TASK = SentimentTask()
