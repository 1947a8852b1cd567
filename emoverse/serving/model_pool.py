"""Generation for served model ids: one base model per replica, LoRA adapters over it.

Model ids sharing a base (a run's stages, tenant adapters) share its weights: adapters
are attached to one peft model under their model id and switched per batch; an id with
no adapter runs with the adapters disabled. Plain Python and torch, no Ray: the Serve
deployment calls `load`, `unload` and `generate` (one thread at a time per pool).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from emoverse.model.generation import greedy_new_tokens
from emoverse.serving.catalog import Catalog, ModelEntry
from emoverse.model.inputs import Collator


@dataclass
class Job:
    """One prompt and its clip, as the model's processor takes them."""

    prompt: str
    frames: np.ndarray  # (num_frames, size, size, 3) uint8, from the media stage's code
    max_new_tokens: int


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    batch_size: int
    generate_ms: float


@dataclass
class _Base:
    model: object  # a transformers model, or a peft model once an adapter is attached
    processor: object
    device: str
    collate: Collator
    adapters: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)  # loaded model ids on this base


class ModelPool:
    def __init__(self, catalog: Catalog, trust_remote_code: bool = False,
                 torch_threads: int = 1):
        import torch

        torch.set_num_threads(torch_threads)
        self.catalog = catalog
        self.trust_remote_code = trust_remote_code
        self._bases: dict[str, _Base] = {}
        # Adapter switching mutates the shared model: loads, unloads and generation
        # must not interleave.
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        return sorted(u for b in self._bases.values() for u in b.users)

    def load(self, model_id: str) -> None:
        with self._lock:
            self._load(self.catalog.entry(model_id))

    def unload(self, model_id: str) -> None:
        """Drop `model_id`'s adapter, and its base once no loaded id uses it (idempotent)."""
        with self._lock:
            entry = self.catalog.entry(model_id)
            base = self._bases.get(entry.base)
            if base is None or model_id not in base.users:
                return
            base.users.discard(model_id)
            if not base.users:
                del self._bases[entry.base]
            elif model_id in base.adapters and len(base.adapters) > 1:
                base.adapters.discard(model_id)
                _delete_adapter(base.model, model_id)
            # A base's last adapter stays attached while the base is in use: peft can drop
            # it only by keeping its modules_to_save copies (`unload`) in the base.

    def generate(self, model_id: str, jobs: list[Job]) -> list[Generation]:
        """Greedy answers of `model_id` for `jobs`, generated as one batch."""
        with self._lock:
            entry = self.catalog.entry(model_id)
            base = self._load(entry)
            start = time.perf_counter()
            enc = base.collate({"prompt": [j.prompt for j in jobs],
                                "frames": [j.frames for j in jobs]})
            enc = {k: v.to(base.device) if hasattr(v, "to") else v for k, v in enc.items()}
            budget = max(j.max_new_tokens for j in jobs)
            with _selected(base, entry):
                new = greedy_new_tokens(base.model, enc, budget)
            elapsed = (time.perf_counter() - start) * 1000
        return _decode(base, new, enc["attention_mask"], jobs, elapsed)

    def _load(self, entry: ModelEntry) -> _Base:
        base = self._bases.get(entry.base) or self._load_base(entry.base)
        if entry.adapter and entry.id not in base.adapters:
            base.model = _attached(base.model, entry)
            base.model.eval()
            base.adapters.add(entry.id)
        base.users.add(entry.id)
        return base

    def _load_base(self, path: str) -> _Base:
        from emoverse.model.checkpoint import load_model, load_processor

        processor = load_processor(path, self.trust_remote_code)
        device = _device()
        model = load_model(path, self.trust_remote_code).to(device).eval()
        base = _Base(model=model, processor=processor, device=device,
                     collate=Collator(processor, train=False))
        self._bases[path] = base
        return base


def _device() -> str:
    """The replica's GPU when Serve gave it one (`model_server.num_gpus`), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _attached(model, entry: ModelEntry):
    """`model` with `entry`'s adapter loaded under its model id."""
    from emoverse.model.checkpoint import (adapter_modules_to_save, peft_on_transformers,
                                           untie_saved_output_layer)

    wrapped = hasattr(model, "peft_config")
    untie_saved_output_layer(model.get_base_model() if wrapped else model,
                             adapter_modules_to_save(entry.adapter))
    with peft_on_transformers():
        if wrapped:
            model.load_adapter(entry.adapter, adapter_name=entry.id, is_trainable=False)
            return model
        from peft import PeftModel

        return PeftModel.from_pretrained(model, entry.adapter, adapter_name=entry.id,
                                         is_trainable=False)


def _delete_adapter(model, adapter: str) -> None:
    remaining = [a for a in model.peft_config if a != adapter]
    model.set_adapter(remaining[0])  # never delete the active adapter
    model.delete_adapter(adapter)


class _selected:
    """Context: the base runs with `entry`'s adapter active, or with adapters disabled."""

    def __init__(self, base: _Base, entry: ModelEntry):
        self.base, self.entry = base, entry
        self._disabled = None

    def __enter__(self):
        model = self.base.model
        if self.entry.adapter:
            model.set_adapter(self.entry.id)
        elif hasattr(model, "peft_config"):
            self._disabled = model.disable_adapter()
            self._disabled.__enter__()
        return model

    def __exit__(self, *exc):
        if self._disabled is not None:
            self._disabled.__exit__(*exc)
        return False


def _stop_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return {*eos, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}


def _decode(base: _Base, new, attention_mask, jobs: list[Job], elapsed: float) -> list[Generation]:
    """Each row's text within its own budget (a batch generates up to the largest)."""
    tokenizer = base.processor.tokenizer
    stop = _stop_ids(base.model, tokenizer)
    results = []
    for row, job, mask in zip(new.tolist(), jobs, attention_mask):
        row = row[:job.max_new_tokens]
        length = next((i for i, t in enumerate(row) if t in stop), len(row))
        text = tokenizer.decode(row[:length], skip_special_tokens=True).strip()
        results.append(Generation(text=text, prompt_tokens=int(mask.sum()),
                                  completion_tokens=length, batch_size=len(jobs),
                                  generate_ms=elapsed))
    return results
