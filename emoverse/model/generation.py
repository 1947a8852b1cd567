"""Greedy generation for EMT rows with any image-text-to-text model, and the answer budget
it needs. No Ray: evaluation, validation and serving all generate through here."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import pandas as pd

from emoverse.model.checkpoint import hears as model_hears
from emoverse.model.checkpoint import load_model, load_processor
from emoverse.model.inputs import AUDIO_COLUMNS, Collator


def greedy_new_tokens(model, enc: Mapping, max_new_tokens: int, streamer=None):
    """The tokens `model` generates greedily after the prompts of `enc` (batch, new);
    `streamer` (a transformers `BaseStreamer`) gets each step's tokens as they come."""
    import torch

    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             streamer=streamer)
    return out[:, enc["input_ids"].shape[1]:]


Budget = Union[int, Mapping[str, int]]  # new tokens: one for every row, or per task


class AnswerGenerator:
    """Loads a model (adapters merged) once; turns batches of rows into answer texts.

    With a budget per task, a batch is generated task by task, each within its own budget:
    a batch runs until its longest answer ends, so one ERI explanation in a batch of
    one-word MSA answers would otherwise make every row decode for as long as it does.
    A model trained with audio (its checkpoint says so) is given each row's audio too."""

    def __init__(self, model_path: str, max_new_tokens: Budget = 32, torch_threads: int = 1):
        import torch

        torch.set_num_threads(torch_threads)
        self._use(load_model(model_path), load_processor(model_path), max_new_tokens,
                  model_hears(model_path))

    @classmethod
    def from_model(cls, model, processor, max_new_tokens: Budget = 32,
                   hears: bool = False) -> "AnswerGenerator":
        """A generator over a model already in memory (a stage's, once it has trained);
        a PEFT model's adapters are merged first, as `load_model` merges a saved one."""
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        generator = cls.__new__(cls)
        generator._use(model, processor, max_new_tokens, hears)
        return generator

    def _use(self, model, processor, max_new_tokens: Budget, hears: bool) -> None:
        self.model, self.processor = model.eval(), processor
        self.hears = hears
        self.collate = Collator(processor, train=False, hears=hears)
        self.max_new_tokens = max_new_tokens

    @property
    def columns(self) -> tuple[str, ...]:
        """The row columns `generate` reads besides `task`."""
        return ("prompt", "frames", *(AUDIO_COLUMNS if self.hears else ()))

    def generate(self, batch: Mapping[str, Sequence]) -> list[str]:
        """Answers to `batch`'s rows (`columns`; `task` with per-task budgets)."""
        if isinstance(self.max_new_tokens, int):
            return self._answer(batch, self.max_new_tokens)
        texts: list[str] = [""] * len(batch["prompt"])
        tasks = list(batch["task"])
        for task in dict.fromkeys(tasks):
            rows = [i for i, t in enumerate(tasks) if t == task]
            part = {key: [batch[key][i] for i in rows] for key in self.columns}
            for i, text in zip(rows, self._answer(part, self.max_new_tokens[task])):
                texts[i] = text
        return texts

    def _answer(self, batch: Mapping[str, Sequence], budget: int) -> list[str]:
        enc = {k: v.to(self.model.device) for k, v in self.collate(batch).items()}
        new = greedy_new_tokens(self.model, enc, budget)
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


def answer_rows(generator: AnswerGenerator, rows: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """(sample_id, task, prediction) for `rows` (sample_id, task and the generator's
    `columns`), answered in batches of one task where possible (sorted by task, then id)."""
    rows = rows.sort_values(["task", "sample_id"], kind="stable").reset_index(drop=True)
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start:start + batch_size]
        texts += generator.generate({key: chunk[key].tolist()
                                     for key in ("task", *generator.columns)})
    return pd.DataFrame({"sample_id": rows.sample_id.values, "task": rows.task.values,
                         "prediction": texts})


def answer_budgets(manifest: pd.DataFrame, model_path: str | Path, split: str) -> dict[str, int]:
    """Per task of the split: enough new tokens for its longest target, plus a margin."""
    tokenizer = load_processor(model_path).tokenizer
    rows = manifest[manifest.split == split]
    return {task: max(len(ids) for ids in tokenizer(group.target.tolist(),
                                                    add_special_tokens=False).input_ids) + 4
            for task, group in rows.groupby("task")}
