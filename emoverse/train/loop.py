"""One training loop for every M2SE stage: plain torch, no Ray.

The caller supplies an engine (`emoverse.train.engine`: optimiser, schedule, DDP or
DeepSpeed), a function giving each epoch's batches, and callbacks; the Ray Train adapter
passes Ray Data shards and reports, a plain script passes a list or a DataLoader. A
resumed run passes the saved `LoopState`: the step count, the schedule and the position
in the epoch carry on where the checkpoint left them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from emoverse.recipe import StageConfig
from emoverse.train.engine import Engine


@dataclass
class LoopState:
    step: int = 0  # optimizer steps so far
    epoch: int = 0  # completed epochs
    epoch_step: int = 0  # optimizer steps into the current epoch
    samples: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per logged window
    # The losses since the last logged window, so a run resumed mid-window logs what the
    # uninterrupted one logs.
    window: list[float] = field(default_factory=list)
    data_wait: float = 0.0  # seconds spent waiting for batches
    compute: float = 0.0  # seconds spent in forward/backward/step
    callbacks: float = 0.0  # seconds spent logging, reporting and checkpointing
    epoch_start_wait: float = 0.0  # the part of data_wait spent on each epoch's first batch

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait / max(1e-9, self.data_wait + self.compute)

    @property
    def warm_data_wait_fraction(self) -> float:
        """Waiting for data once each epoch's pipeline is running (first batches excluded)."""
        warm = self.data_wait - self.epoch_start_wait
        return warm / max(1e-9, warm + self.compute)

    @property
    def samples_per_second(self) -> float:
        """This process's samples over its whole loop time (waits and checkpoints included)."""
        return self.samples / max(1e-9, self.data_wait + self.compute + self.callbacks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoopState":
        return cls(**data)


def train_epochs(engine: Engine, epoch_batches: Callable[[int], Iterable[dict]],
                 stage: StageConfig, total_steps: int, state: LoopState | None = None,
                 on_log: Callable[[LoopState, dict], None] | None = None,
                 on_checkpoint: Callable[[LoopState, dict, bool], None] | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> LoopState:
    """Train until the stage's epochs or `total_steps`; returns the final loop state.

    `on_checkpoint(state, metrics, final)` runs every `stage.checkpoint_every` steps, at
    each epoch's end and once more when training ends (`final`), on every worker alike.
    `on_batch(epoch, micro_batch)` runs before each micro-batch's forward pass (to seed it).
    """
    state = state or LoopState()
    engine.module.train()

    def checkpoint(final: bool) -> None:
        if on_checkpoint:
            window = state.window
            mean = sum(window) / len(window) if window else (state.losses or [float("nan")])[-1]
            on_checkpoint(state, {"loss": mean}, final)

    while state.epoch < stage.epochs and state.step < total_steps:
        skip = state.epoch_step * stage.grad_accum  # micro-batches a resumed epoch has done
        tick = time.perf_counter()
        for micro, batch in enumerate(epoch_batches(state.epoch)):
            if micro < skip:
                continue
            start = time.perf_counter()
            state.data_wait += start - tick
            if micro == skip:
                state.epoch_start_wait += start - tick
            if on_batch:
                on_batch(state.epoch, micro)
            loss = engine.forward(batch)
            stepped = engine.backward(loss)
            state.window.append(float(loss.detach()))
            state.samples += int(batch["input_ids"].shape[0])
            tick = time.perf_counter()
            state.compute += tick - start
            if stepped is None:
                continue
            state.step += 1
            state.epoch_step += 1
            if on_log and state.step % stage.log_every == 0:
                state.losses.append(sum(state.window) / len(state.window))
                state.window = []
                on_log(state, {"loss": state.losses[-1], **stepped})
            if state.step >= total_steps:
                break
            if stage.checkpoint_every and state.step % stage.checkpoint_every == 0:
                checkpoint(final=False)
            state.callbacks += time.perf_counter() - tick
            tick = time.perf_counter()
        state.epoch += 1
        state.epoch_step = 0
        checkpoint(final=state.epoch >= stage.epochs or state.step >= total_steps)
    return state
