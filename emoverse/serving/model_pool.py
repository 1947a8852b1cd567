"""Generation for served model ids: one base model per replica, LoRA adapters over it.

Model ids sharing a base (a run's stages, tenant adapters) share its weights: adapters
are attached to one peft model under their model id and switched per batch; an id with
no adapter runs with the adapters disabled. Plain Python and torch, no Ray: the Serve
deployment calls `load`, `unload`, `generate` (whole answers) and `stream` (one
generation at a time per pool).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np

from emoverse.model.generation import greedy_new_tokens
from emoverse.serving.catalog import Catalog, ModelEntry
from emoverse.model.inputs import Collator, generation_collators


@dataclass
class Job:
    """One prompt and its clip, as the model's processor takes them."""

    prompt: str
    frames: np.ndarray  # (num_frames, size, size, 3) uint8, from the media stage's code
    max_new_tokens: int
    audio: np.ndarray | None = None  # int16 mono samples, for a model that hears


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    batch_size: int
    generate_ms: float


@dataclass
class Delta:
    """A streamed row's new text since its last delta; `done` on its last one."""

    text: str
    done: Generation | None = None


@dataclass
class _Base:
    model: object  # a transformers model, or a peft model once an adapter is attached
    processor: object
    device: str
    collators: dict[bool, Collator]  # without and with the audio
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
        self._unloads: list[str] = []  # asked for while a generation held the lock

    @property
    def loaded(self) -> list[str]:
        return sorted(u for b in self._bases.values() for u in b.users)

    def load(self, model_id: str) -> None:
        with self._lock:
            self._settle()
            self._load(self.catalog.entry(model_id))

    def unload(self, model_id: str) -> None:
        """Drop `model_id`'s adapter, and its base once no loaded id uses it (idempotent).
        Never waits: during a generation (a paused stream holds the lock while the event
        loop, which calls this on eviction, runs) it is done before the next load."""
        self._unloads.append(model_id)
        if self._lock.acquire(blocking=False):
            try:
                self._settle()
            finally:
                self._lock.release()

    def _settle(self) -> None:
        """The unloads asked for so far, in order (the lock held)."""
        while self._unloads:
            model_id = self._unloads.pop(0)
            entry = self.catalog.entry(model_id)
            base = self._bases.get(entry.base)
            if base is None or model_id not in base.users:
                continue
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
            self._settle()
            entry = self.catalog.entry(model_id)
            base = self._load(entry)
            start = time.perf_counter()
            enc = _encode(base, jobs, entry.hears)
            budget = max(j.max_new_tokens for j in jobs)
            with _selected(base, entry):
                new = greedy_new_tokens(base.model, enc, budget)
            elapsed = (time.perf_counter() - start) * 1000
        return _decode(base, new, enc["attention_mask"], jobs, elapsed)

    async def stream(self, model_id: str, jobs: list[Job]) -> AsyncIterator[list[Delta | None]]:
        """`generate`, step by step: per decoding step, each row's `Delta` (None once the
        row is done); the rows' final texts equal `generate`'s.

        transformers' `generate` runs in a thread only so that it can pause after each
        step (its streamer waits): the event loop waits for each step and, after a step
        with text, sends it. The two never run at once, so the generation does not fight
        the loop for the GIL (free-running, it did: batches of streams stayed at 1-2
        requests and streamed throughput fell to 0.41 of whole answers')."""
        steps: queue.SimpleQueue = queue.SimpleQueue()
        resume = threading.Semaphore(0)
        stop = threading.Event()
        worker = threading.Thread(target=self._generate_into, name="emoverse-stream",
                                  args=(model_id, jobs, steps, resume, stop), daemon=True)
        worker.start()
        try:
            rows: list[_RowStream] = []
            first = True
            while True:
                item = steps.get()  # blocks the loop while the step computes, on purpose
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                if isinstance(item, tuple):  # the batch is ready to decode
                    base, mask, start = item
                    rows = [_RowStream(base, job, int(m.sum()), len(jobs), start)
                            for job, m in zip(jobs, mask)]
                    continue
                deltas = [row.add(token) for row, token in zip(rows, item)]
                # the first step opens the streams; a later one is worth a pause of the
                # generation only when it carries text or ends a row
                if first or any(d is not None and (d.text or d.done) for d in deltas):
                    first = False
                    yield deltas
                    await asyncio.sleep(0)  # let the loop send it
                resume.release()
            last = [row.finish() for row in rows]
            if any(d is not None for d in last):
                yield last
        finally:
            if worker.is_alive():  # the caller stopped early: end the generation
                stop.set()
                resume.release()
                worker.join()

    def _generate_into(self, model_id: str, jobs: list[Job], steps: queue.SimpleQueue,
                       resume: threading.Semaphore, stop: threading.Event) -> None:
        """Generation for `stream` (a thread): the base, then each step's tokens, each
        time waiting until the caller has taken them."""
        from transformers.generation.streamers import BaseStreamer

        class Steps(BaseStreamer):
            def put(self, value):
                if value.ndim == 1:  # the first call carries the prompts
                    steps.put(value.tolist())
                    resume.acquire()
                    if stop.is_set():
                        raise _Stopped()

            def end(self):
                pass

        try:
            with self._lock:
                self._settle()
                entry = self.catalog.entry(model_id)
                base = self._load(entry)
                enc = _encode(base, jobs, entry.hears)
                steps.put((base, enc["attention_mask"], time.perf_counter()))
                with _selected(base, entry):
                    greedy_new_tokens(base.model, enc, max(j.max_new_tokens for j in jobs),
                                      streamer=Steps())
            steps.put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the caller
            steps.put(exc)

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
                     collators=generation_collators(processor))
        self._bases[path] = base
        return base


def _encode(base: _Base, jobs: list[Job], hears: bool = False) -> dict:
    """The jobs as one batch of model inputs (their audio too, for a model that `hears`),
    on the base's device."""
    rows = {"prompt": [j.prompt for j in jobs], "frames": [j.frames for j in jobs]}
    if hears:
        rows.update(audio=[j.audio for j in jobs], audio_samples=[len(j.audio) for j in jobs])
    enc = base.collators[hears](rows)
    return {k: v.to(base.device) if hasattr(v, "to") else v for k, v in enc.items()}


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


class _Stopped(Exception):
    """A stream's caller went away: its generation ends at the next step."""


class _RowStream:
    """One row's text as its tokens come, cut where `_decode` cuts it (its own budget,
    the first stop token); deltas hold back trailing whitespace and half characters, so
    the deltas add up to the final text exactly."""

    def __init__(self, base: _Base, job: Job, prompt_tokens: int, batch_size: int,
                 start: float):
        self.tokenizer = base.processor.tokenizer
        self.stop = _stop_ids(base.model, self.tokenizer)
        self.job, self.prompt_tokens, self.batch_size, self.start = (
            job, prompt_tokens, batch_size, start)
        self.ids: list[int] = []
        self.sent = ""
        self.done = False

    def add(self, token: int) -> Delta | None:
        if self.done:
            return None
        if token in self.stop:
            return self.finish()
        self.ids.append(token)
        if len(self.ids) >= self.job.max_new_tokens:
            return self.finish()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return Delta("")
        delta, self.sent = text[len(self.sent):], text
        return Delta(delta)

    def finish(self) -> Delta | None:
        if self.done:
            return None
        self.done = True
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        generation = Generation(text=text, prompt_tokens=self.prompt_tokens,
                                completion_tokens=len(self.ids), batch_size=self.batch_size,
                                generate_ms=(time.perf_counter() - self.start) * 1000)
        return Delta(text[len(self.sent):] if text.startswith(self.sent) else "", generation)


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
