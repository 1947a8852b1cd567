"""Greedy generation for EMT rows with any image-text-to-text model. No Ray."""

from __future__ import annotations

from typing import Mapping, Sequence

from emoverse.train.batching import Collator


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
        import torch

        enc = self.collate(batch)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                      do_sample=False)
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
