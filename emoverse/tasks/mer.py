"""MER: multimodal emotion recognition over the seven MELD emotions."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .base import (EMOTION_ALIASES, EMOTIONS, Answer, Task, canonical_emotion,
                   classification_scores, parse_choice)


class EmotionTask(Task):
    name = "mer"
    title = "Multimodal emotion recognition"
    tag = "<emotion>"
    instruction = ("Which emotion does the person in the video show? Answer one of anger, "
                   "disgust, fear, joy, neutral, sadness, surprise.")
    primary_metric = "weighted_f1"
    answer_budget = 8
    classes = EMOTIONS

    def format_answer(self, gold: str) -> str:
        return f"{gold.capitalize()}."

    def parse(self, text: str) -> Answer:
        return parse_choice(text, {**{e: e for e in EMOTIONS}, **EMOTION_ALIASES})

    def gold(self, row: Mapping) -> str:
        label = canonical_emotion(str(row["label_class"]))
        if label is None:
            raise ValueError(f"mer label must be an emotion, got {row['label_class']!r}")
        return label

    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        return classification_scores(golds, answers)

    def answer_fields(self, value: str) -> dict:
        return {"label": value}


TASK = EmotionTask()
