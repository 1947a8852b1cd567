"""Every stage's sequence budget, checked before any work starts.

A sample is its clip's visual tokens (frames x tokens per frame, plus the processor's
frame markers; for a stage that hears, the audio tokens of `media.audio.max_seconds` too),
the chat-templated prompt, and the answer. Each stage's longest sample
(by text tokens, among the training rows its mixture draws) is rendered exactly as the
collator will render it, with a blank clip of the recipe's frames and size, and must fit
the stage's `max_length`; a sample that does not is a `BudgetError` naming the stage, the
numbers and the settings to change. Over-long samples would otherwise stop a stage hours
in, or (truncated inside the image tokens) break the model's token/feature count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from emoverse.emt.mixture import matches
from emoverse.model.inputs import Collator, fit_processor, messages
from emoverse.recipe import MediaConfig, Recipe, StageConfig


class BudgetError(ValueError):
    """A stage whose longest sample does not fit its max_length."""


@dataclass(frozen=True)
class StageBudget:
    stage: str
    visual: int  # tokens of one clip, frame markers (and its audio, if heard) included
    prompt: int  # the longest sample's templated prompt, without the clip
    answer: int
    total: int
    max_length: int
    hears: bool = False

    @property
    def fits(self) -> bool:
        return self.total <= self.max_length

    def problem(self, media: MediaConfig) -> str:
        heard = f" and {media.audio.max_seconds:g} s of audio" if self.hears else ""
        return (f"stage {self.stage!r}: its longest sample needs {self.total} tokens (clip "
                f"{self.visual} for {media.num_frames} frames at {media.size} px{heard}, "
                f"prompt {self.prompt}, answer {self.answer}) but max_length is "
                f"{self.max_length}; set stages.{self.stage}.max_length={self.total} or more, "
                f"or lower media.num_frames{' or media.audio.max_seconds' if heard else ''}")


def stage_rows(manifest: pd.DataFrame, stage: StageConfig) -> pd.DataFrame:
    """The training rows `stage`'s mixture draws from."""
    train = manifest[manifest.split == "train"]
    keep = [any(matches(e, t, s) for e in stage.mixture)
            for t, s in zip(train.task, train.source)]
    return train[keep]


def _text_only(convo: list[dict]) -> list[dict]:
    return [{**turn, "content": [p for p in turn["content"]
                                 if p.get("type") not in ("video", "audio")]}
            if isinstance(turn["content"], list) else turn for turn in convo]


def sample_budget(processor, prompt: str, target: str, media: MediaConfig,
                  hears: bool = False) -> tuple[int, ...]:
    """(clip, prompt, answer, total) tokens of one sample as the collator renders it; the
    clip's audio (the longest the cache keeps) counts when the stage `hears`."""
    tokenizer = processor.tokenizer
    row = {"prompt": [prompt], "target": [target],
           "frames": [np.zeros((media.num_frames, media.size, media.size, 3), np.uint8)]}
    if hears:
        row.update(audio=[np.zeros(media.audio.max_samples, np.int16)],
                   audio_samples=[media.audio.max_samples])
    total = int(Collator(processor, max_length=10 ** 9, hears=hears)(row)
                ["attention_mask"].sum())

    def length(convo, generation_prompt):
        text = processor.apply_chat_template(convo, tokenize=False,
                                             add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    text_prompt = length(_text_only(messages(prompt)), True)
    text_total = length(_text_only(messages(prompt, target)), False)
    return total - text_total, text_prompt, text_total - text_prompt, total


def stage_budgets(recipe: Recipe, manifest: pd.DataFrame, processor) -> list[StageBudget]:
    """Each stage's longest sample, measured."""
    fit_processor(processor, recipe.media.size)
    tokenizer = processor.tokenizer
    budgets = []
    for stage in recipe.stages:
        rows = stage_rows(manifest, stage)
        if rows.empty:
            continue  # the mixture's own check reports this, with the entry that matched nothing
        lengths = [len(p) + len(t) for p, t in zip(
            tokenizer(rows.prompt.astype(str).tolist(), add_special_tokens=False).input_ids,
            tokenizer(rows.target.astype(str).tolist(), add_special_tokens=False).input_ids)]
        longest = rows.iloc[int(np.argmax(lengths))]
        visual, prompt, answer, total = sample_budget(processor, str(longest.prompt),
                                                      str(longest.target), recipe.media,
                                                      stage.audio)
        budgets.append(StageBudget(stage.name, visual, prompt, answer, total, stage.max_length,
                                   stage.audio))
    return budgets


def check_budgets(recipe: Recipe, manifest: pd.DataFrame, processor) -> list[StageBudget]:
    """The stages' budgets; a `BudgetError` naming every stage that does not fit."""
    budgets = stage_budgets(recipe, manifest, processor)
    problems = [b.problem(recipe.media) for b in budgets if not b.fits]
    if problems:
        raise BudgetError("; ".join(problems))
    return budgets
