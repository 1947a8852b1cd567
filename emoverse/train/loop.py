"""One training loop for every M2SE stage: plain torch, no Ray.

The caller supplies the model, a function giving each epoch's batches, and callbacks;
the Ray Train adapter passes Ray Data shards and reports, a plain script passes a
DataLoader. Optimiser: AdamW; schedule: linear warm-up, cosine decay to a floor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from emoverse.recipe import StageConfig


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    samples: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per logged window
    data_wait: float = 0.0  # seconds spent waiting for batches
    compute: float = 0.0  # seconds spent in forward/backward/step

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait / max(1e-9, self.data_wait + self.compute)

    @property
    def samples_per_second(self) -> float:
        """This process's samples over its own training time (waiting included)."""
        return self.samples / max(1e-9, self.data_wait + self.compute)


def make_optimizer(model, stage: StageConfig, total_steps: int):
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)

    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        progress = min(1.0, (step - stage.warmup_steps) / max(1, total_steps - stage.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * cosine

    return optimizer, LambdaLR(optimizer, factor)


def train_epochs(model, epoch_batches: Callable[[int], Iterable[dict]], stage: StageConfig,
                 total_steps: int, state: LoopState | None = None,
                 on_log: Callable[[LoopState, dict], None] | None = None,
                 on_epoch_end: Callable[[LoopState, dict], None] | None = None,
                 optimizer=None, scheduler=None) -> LoopState:
    """Train `model` for the stage's epochs; returns the final loop state."""
    import torch

    state = state or LoopState()
    if optimizer is None:
        optimizer, scheduler = make_optimizer(model, stage, total_steps)
    model.train()
    window: list[float] = []
    for epoch in range(state.epoch, stage.epochs):
        state.epoch = epoch
        tick = time.perf_counter()
        for micro, batch in enumerate(epoch_batches(epoch)):
            start = time.perf_counter()
            state.data_wait += start - tick
            loss = model(**batch).loss
            (loss / stage.grad_accum).backward()
            window.append(float(loss.detach()))
            state.samples += int(batch["input_ids"].shape[0])
            if (micro + 1) % stage.grad_accum == 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], stage.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                if on_log and state.step % stage.log_every == 0:
                    state.losses.append(sum(window) / len(window))
                    on_log(state, {"loss": state.losses[-1], "grad_norm": float(grad_norm),
                                   "lr": scheduler.get_last_lr()[0]})
                    window = []
            tick = time.perf_counter()
            state.compute += tick - start
        state.epoch = epoch + 1
        if on_epoch_end:
            mean = sum(window) / len(window) if window else (state.losses or [float("nan")])[-1]
            on_epoch_end(state, {"loss": mean})
    return state
