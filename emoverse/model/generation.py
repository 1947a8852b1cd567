"""Greedy generation for EMT rows with any image-text-to-text model, and the answer budget
it needs. No Ray: evaluation, validation and serving all generate through here."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from emoverse.model.checkpoint import load_model, load_processor
from emoverse.model.inputs import Collator


def greedy_new_tokens(model, enc: Mapping, max_new_tokens: int):
    """The tokens `model` generates greedily after the prompts of `enc` (batch, new)."""
    import torch

    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, enc["input_ids"].shape[1]:]


class AnswerGenerator:
    """Loads a model (adapters merged) once; turns batches of rows into answer texts."""

    def __init__(self, model_path: str, max_new_tokens: int = 32, torch_threads: int = 1):
        import torch

        torch.set_num_threads(torch_threads)
        self.processor = load_processor(model_path)
        self.model = load_model(model_path).eval()
        self.collate = Collator(self.processor, train=False)
        self.max_new_tokens = max_new_tokens

    def generate(self, batch: Mapping[str, Sequence]) -> list[str]:
        new = greedy_new_tokens(self.model, self.collate(batch), self.max_new_tokens)
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


def answer_budget(manifest: pd.DataFrame, model_path: str | Path, split: str) -> int:
    """Enough new tokens for the longest target of the split, plus a margin."""
    tokenizer = load_processor(model_path).tokenizer
    targets = manifest[manifest.split == split].target.tolist()
    return max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in targets) + 4
