"""What every EMT task provides: prompt, answer format, parser, metric and baseline.

A task is one small module defining a `Task` subclass; `emoverse.tasks` registers it
by name. Tasks are plain Python: no Ray, no torch, no media.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

SYSTEM_PROMPT = "You are a sentiment and emotion analysis expert."

# The seven MELD/M2SE emotion classes, and the names other corpora use for them.
EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
EMOTION_ALIASES = {"happy": "joy", "happiness": "joy", "sad": "sadness", "angry": "anger",
                   "surprised": "surprise", "disgusted": "disgust", "scared": "fear"}


def canonical_emotion(word: str) -> str | None:
    """Map an emotion word (any case, alias allowed) to its class name, or None."""
    w = normalize(word)
    w = EMOTION_ALIASES.get(w, w)
    return w if w in EMOTIONS else None


def normalize(text: str) -> str:
    """Lower-case, collapse white space and drop trailing periods: the parsers' tolerance."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


@dataclass(frozen=True)
class Answer:
    """A model answer after parsing. `value` is None exactly when parsing failed."""

    text: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Task(ABC):
    """One EMT task. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # short lower-case name used in manifests and configs, e.g. "msa"
    title: ClassVar[str]
    tag: ClassVar[str]  # the paper's task tag, e.g. "<sentiment>"
    instruction: ClassVar[str]
    primary_metric: ClassVar[str]  # the key of `score()` that sweeps and tables use
    answer_budget: ClassVar[int]  # new tokens a served answer may take (its longest, plus margin)
    speech_in_prompt: ClassVar[bool] = True  # FER looks at the face only
    # The prompt is built from a conversation and a target utterance (ECPE), not a transcript.
    needs_conversation: ClassVar[bool] = False
    # A classification task's classes: reports draw its confusion matrix.
    classes: ClassVar[tuple[str, ...]] = ()

    def prompt(self, transcript: str = "", context: Sequence[Mapping] | None = None,
               target_utterance: int | None = None) -> str:
        """The user turn's text (the video part is added by the model's chat template)."""
        parts = []
        if self.speech_in_prompt:
            parts.append(f"The person says: {transcript.strip()}")
        parts.append(f"{self.tag} {self.instruction}")
        return "\n".join(parts)

    @abstractmethod
    def format_answer(self, gold: Any) -> str:
        """The target text the model is trained to produce for a gold label."""

    @abstractmethod
    def parse(self, text: str) -> Answer:
        """Turn model text back into a structured answer; never guess a class."""

    @abstractmethod
    def gold(self, row: Mapping) -> Any:
        """The structured gold label of a manifest row, comparable with `Answer.value`."""

    @abstractmethod
    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        """Metrics over paired golds and parsed answers (unparseable answers count as wrong)."""

    @abstractmethod
    def answer_fields(self, value: Any) -> dict[str, Any]:
        """A parsed answer's value as the serving API's JSON fields (`label`, `pairs`, ...)."""

    def label_summary(self, row: Mapping) -> str:
        """What `emoverse emt stats` counts a manifest row's label as."""
        label = row.get("label_class")
        return "-" if label is None or label != label else str(label)  # None or NaN: no label

    def baseline(self, train_golds: Sequence[Any], eval_golds: Sequence[Any]) -> list[Any]:
        """Majority-class predictions for the evaluation set, learnt from training golds."""
        majority = most_common(train_golds)
        return [majority for _ in eval_golds]

    def answers_from_values(self, values: Sequence[Any]) -> list[Answer]:
        """Wrap structured predictions (e.g. a baseline's) as parsed answers."""
        return [Answer(text=self.format_answer(v), value=v) for v in values]


def most_common(values: Sequence[Any]) -> Any:
    """The most frequent value; ties broken by first appearance, for determinism."""
    if not values:
        raise ValueError("cannot take the majority of an empty label list")
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def unparsed_rate(answers: Sequence[Answer]) -> float:
    return sum(not a.ok for a in answers) / len(answers) if answers else 0.0


def classification_scores(golds: Sequence[str], answers: Sequence[Answer]) -> dict[str, float]:
    """Accuracy and weighted F1 with sklearn; an unparsed answer is its own wrong class."""
    from sklearn.metrics import accuracy_score, f1_score

    if not golds:
        return {}
    preds = [a.value if a.ok else "<unparsed>" for a in answers]
    present = sorted(set(golds))
    return {
        "accuracy": float(accuracy_score(golds, preds)),
        "weighted_f1": float(f1_score(golds, preds, labels=present, average="weighted",
                                      zero_division=0)),
        "unparsed": unparsed_rate(answers),
        "n": float(len(golds)),
    }


def parse_choice(text: str, choices: Mapping[str, str]) -> Answer:
    """Parse a one-word answer against `choices` (normalised word -> class name)."""
    word = normalize(text)
    if word in choices:
        return Answer(text=text, value=choices[word])
    return Answer(text=text, error=f"not one of {sorted(set(choices.values()))}: {text!r}")
