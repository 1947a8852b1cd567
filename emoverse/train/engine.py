"""What performs a training step: plain torch (DDP-wrapped by the caller) or DeepSpeed.

An engine owns the optimiser and the learning-rate schedule, turns each micro-batch's
loss into gradients, steps at gradient-accumulation boundaries, and saves and loads
everything a resumed run needs. The loop (`emoverse.train.loop`) only calls `forward`,
`backward`, `save` and `load`, so it runs the same on either engine.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Protocol

from emoverse.recipe import StageConfig

ENGINE_STATE = "engine.pt"


class Engine(Protocol):
    def forward(self, batch: dict):
        """The loss of one micro-batch."""

    def backward(self, loss) -> dict | None:
        """Accumulate gradients; at a boundary step and return {grad_norm, lr}."""

    def save(self, directory: Path, is_main: bool) -> None:
        """Write the resumable state into `directory` (call on every worker)."""

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote."""

    def save_pretrained(self, directory: Path, is_main: bool) -> bool:
        """Write the model's weights in Hugging Face form (call on every worker); True
        where they were written."""

    @property
    def module(self):
        """The bare model (no DDP/DeepSpeed wrapper), for `save_pretrained`."""


def make_optimizer(model, stage: StageConfig, total_steps: int):
    """AdamW over the trainable parameters; linear warm-up, then cosine to a floor."""
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


def autocast(precision: str):
    """bf16 autocast on the model's device type, or nothing for fp32."""
    import torch

    if precision == "bf16":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(model):
    return model.module if hasattr(model, "module") else model


class TorchEngine:
    """AdamW + schedule + clipping around a (possibly DDP-wrapped) model."""

    def __init__(self, model, stage: StageConfig, total_steps: int):
        self.model, self.stage = model, stage
        self.optimizer, self.scheduler = make_optimizer(model, stage, total_steps)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._micro = 0

    @property
    def module(self):
        return unwrap(self.model)

    def forward(self, batch: dict):
        with autocast(self.stage.precision):
            return self.model(**batch).loss

    def backward(self, loss) -> dict | None:
        import torch

        (loss / self.stage.grad_accum).backward()
        self._micro += 1
        if self._micro % self.stage.grad_accum:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self._params, self.stage.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm), "lr": self.scheduler.get_last_lr()[0]}

    def save(self, directory: Path, is_main: bool) -> None:
        import torch

        if not is_main:  # DDP replicas are identical; one copy is enough
            return
        trainable = {n: p.detach().cpu() for n, p in self.module.named_parameters()
                     if p.requires_grad}
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({"trainable": trainable, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict()}, Path(directory) / ENGINE_STATE)

    def save_pretrained(self, directory: Path, is_main: bool) -> bool:
        if is_main:
            self.module.save_pretrained(str(directory))
        return is_main

    def load(self, directory: Path) -> None:
        import torch

        path = Path(directory) / ENGINE_STATE
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = {n for n, p in self.module.named_parameters() if p.requires_grad}
        if set(state["trainable"]) != expected:
            raise ValueError(f"{path}: its trainable parameters differ from this stage's "
                             "(was the recipe's trainable section changed?)")
        self.module.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def make_engine(model, stage: StageConfig, total_steps: int) -> Engine:
    """The stage's engine: DeepSpeed when its strategy says so, plain torch otherwise."""
    if stage.strategy.kind == "deepspeed":
        from emoverse.train.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, stage, total_steps)
    return TorchEngine(model, stage, total_steps)
