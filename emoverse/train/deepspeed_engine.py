"""The DeepSpeed engine: ZeRO-partitioned training behind the same `Engine` protocol.

`deepspeed.initialize` wraps the bare model (never `ray.train.torch.prepare_model`'s DDP
wrapper: DeepSpeed does its own gradient reduction) with the config derived from the stage
(`emoverse.train.deepspeed_config`) and our own torch AdamW + LambdaLR, so the optimiser
and schedule are the ones the DDP path uses. The process group must already exist, with
LOCAL_RANK set (Ray Train's `TorchTrainer` does both); DeepSpeed adopts it instead of
building its own, and places the model itself (`device`: move batches there).

Saving is DeepSpeed's sharded checkpoint: every rank writes its optimiser partition, so
`save` and `load` are collective and run on every worker. Hugging Face weights come from
`save_pretrained()` / `full_state_dict()` (also collective), not from `module` directly:
under ZeRO-3 `engine.module`'s parameters are empty placeholders, and under bf16 the
module holds bf16 copies while the fp32 master weights live in the optimiser.
"""

from __future__ import annotations

from pathlib import Path

from emoverse.recipe import StageConfig
from emoverse.train.deepspeed_config import deepspeed_config, validate_deepspeed_config
from emoverse.train.engine import make_optimizer

TAG = "engine"  # the one checkpoint tag inside a save directory


def world_size() -> int:
    """Workers in the existing process group (1 when there is none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _trainable_names(module) -> list[str]:
    return sorted(n for n, p in module.named_parameters() if p.requires_grad)


class DeepSpeedEngine:
    """`deepspeed.initialize` around a bare model; stepping follows its accumulation."""

    def __init__(self, model, stage: StageConfig, total_steps: int):
        import deepspeed

        self.stage = stage
        self.world_size = world_size()
        self.config = deepspeed_config(stage, self.world_size)
        validate_deepspeed_config(self.config, self.world_size)
        optimizer, scheduler = make_optimizer(model, stage, total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.config)

    @property
    def module(self):
        """The bare model. Under ZeRO-3 its parameters are partitioned: see `full_state_dict`."""
        return self.engine.module

    @property
    def device(self):
        """Where DeepSpeed put the model; batches must be moved here."""
        return self.engine.device

    @property
    def zero_stage(self) -> int:
        return self.engine.zero_optimization_stage()

    def forward(self, batch: dict):
        # No autocast: with bf16 DeepSpeed holds the module in bf16 itself (fp32 master
        # weights in the optimiser). Floating inputs are cast so a bf16 module accepts them.
        if self.stage.precision == "bf16":
            import torch

            batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point()
                     else v for k, v in batch.items()}
        return self.engine(**batch).loss

    def backward(self, loss) -> dict | None:
        # DeepSpeed scales the loss by 1/grad_accum, reduces gradients at the boundary and
        # only steps the optimiser and schedule there; step() must run every micro-batch.
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return {"grad_norm": float("nan") if norm is None else float(norm),
                "lr": float(self.engine.get_lr()[0])}

    def save(self, directory: Path, is_main: bool) -> None:
        """DeepSpeed's sharded checkpoint into `directory/engine` (collective: every rank).

        Each rank writes its own optimiser partition; rank 0 also writes the module state.
        Frozen parameters are left out (they come from the stage's initial weights), so a
        LoRA stage does not copy its base model into every checkpoint. If each worker saves
        into its own local directory, the directories must be merged (as Ray Train does
        when every worker reports its checkpoint) before `load`.
        """
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(directory), tag=TAG, exclude_frozen_parameters=True,
                                    client_state={"trainable": _trainable_names(self.module),
                                                  "world_size": self.world_size})

    def load(self, directory: Path) -> None:
        """Restore weights, optimiser and schedule that `save` wrote (collective).

        Under ZeRO-3 this needs a freshly built engine (DeepSpeed cannot reload into an
        engine whose module has already been partitioned and trained).
        """
        directory = Path(directory)
        if not (directory / TAG).is_dir():
            raise ValueError(f"{directory}: no DeepSpeed checkpoint (expected {directory / TAG})")
        try:
            path, client = self.engine.load_checkpoint(
                str(directory), tag=TAG, load_module_strict=False,
                load_optimizer_states=True, load_lr_scheduler_states=True)
        except (FileNotFoundError, RuntimeError, AssertionError, KeyError) as exc:
            raise ValueError(f"{directory}: the DeepSpeed checkpoint does not load "
                             f"({type(exc).__name__}: {exc})") from exc
        if path is None:
            raise ValueError(f"{directory}: DeepSpeed found no loadable checkpoint under tag "
                             f"{TAG!r} (is this rank's shard missing?)")
        saved = (client or {}).get("trainable")
        if saved is not None and saved != _trainable_names(self.module):
            raise ValueError(f"{directory}: its trainable parameters differ from this stage's "
                             "(was the recipe's trainable section changed?)")

    def full_state_dict(self) -> dict | None:
        """The whole model's state dict in fp32 on rank 0 (None elsewhere); collective.

        Call on every rank, then on rank 0 `module.save_pretrained(dir, state_dict=sd)`
        (transformers and peft both take `state_dict`). ZeRO-3 weights are gathered layer
        by layer (`_zero3_consolidated_16bit_state_dict`, which is fp32 when the stage
        is). Under bf16 the trainable parameters are replaced by their fp32 master copies
        from the optimiser; frozen ones are only held in bf16 by DeepSpeed, so they are
        the bf16-rounded initial weights, upcast.
        """
        import torch.distributed as dist
        from deepspeed.utils import safe_get_full_fp32_param

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.module.state_dict() if rank == 0 else None
        if self.stage.precision == "bf16":
            masters = {}
            for param in self.module.parameters():  # the same order on every rank
                if param.requires_grad:
                    full = safe_get_full_fp32_param(param)  # collective under ZeRO
                    if full is not None:
                        masters[id(param)] = full.detach().cpu()
            if rank == 0:
                for name, param in self.module.named_parameters(remove_duplicate=False):
                    if id(param) in masters and name in state:
                        state[name] = masters[id(param)]
        if rank != 0:
            return None
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    def save_pretrained(self, directory: Path, is_main: bool = True) -> bool:
        """`module.save_pretrained(directory)` with the full fp32 weights; collective.

        Every rank must call it (the weights are gathered); rank 0 writes and gets True
        (DeepSpeed's own rank decides; `is_main` is accepted for the Engine interface).
        transformers records the module's dtype in config.json, and under bf16 DeepSpeed
        holds the module in bf16, so the next stage would load a bf16 model: the written
        config is put back to float32, matching the fp32 weights just saved.
        """
        import json

        state = self.full_state_dict()
        if state is None:
            return False
        directory = Path(directory)
        self.module.save_pretrained(str(directory), state_dict=state)
        config = directory / "config.json"  # absent for a peft adapter (no dtype there)
        if self.stage.precision == "bf16" and config.is_file():
            config.write_text(json.dumps(_float32_dtypes(json.loads(config.read_text())),
                                         indent=2, sort_keys=True) + "\n")
        return True


def _float32_dtypes(node):
    """A config dict with every bfloat16 `dtype`/`torch_dtype` entry set to float32."""
    if isinstance(node, dict):
        return {k: "float32" if k in ("dtype", "torch_dtype") and v == "bfloat16"
                else _float32_dtypes(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_float32_dtypes(v) for v in node]
    return node
