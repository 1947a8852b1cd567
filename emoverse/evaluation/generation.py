"""Greedy generation for EMT rows with any image-text-to-text model. No Ray."""

from __future__ import annotations

from typing import Mapping, Sequence

from emoverse.train.batching import Collator


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

        from emoverse.model.checkpoint import load_model, load_processor

        torch.set_num_threads(torch_threads)
        self.processor = load_processor(model_path)
        self.model = load_model(model_path).eval()
        self.collate = Collator(self.processor, train=False)
        self.max_new_tokens = max_new_tokens

    def generate(self, batch: Mapping[str, Sequence]) -> list[str]:
        new = greedy_new_tokens(self.model, self.collate(batch), self.max_new_tokens)
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
