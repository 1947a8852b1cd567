"""The DeepSpeed JSON config for a stage, and its validation by DeepSpeed's own parser.

The recipe stays the single source of truth: batch sizes, clipping, precision and the
ZeRO strategy are derived from `StageConfig`, never written by hand. deepspeed is
imported inside the functions only, so the driver (which never trains) need not load it.

Optimizer and schedule: there is no `optimizer` or `scheduler` section. The engine passes
its own torch AdamW and LambdaLR (`emoverse.train.engine.make_optimizer`) to
`deepspeed.initialize`, so every strategy runs the same optimiser and schedule as DDP,
and DeepSpeed's compiled CPU Adam (`cpu_adam`, a C++ build per machine) is never needed.
torch AdamW is on DeepSpeed's list of ZeRO-tested optimisers, so
`zero_allow_untested_optimizer` stays off. With `offload_optimizer` DeepSpeed 0.19.8
refuses a client optimiser that is not `DeepSpeedCPUAdam` unless
`zero_force_ds_cpu_optimizer` is false (`ZeRORuntimeException: You are using ZeRO-Offload
with a client provided optimizer ...`). We set it false: on a CPU-only machine the
"offloaded" optimiser runs on the CPU anyway, and torch AdamW steps the fp32 partition in
place exactly as it does without offload (checked on this machine for ZeRO-2 and ZeRO-3
with optimiser and parameter offload, fp32 and bf16). On GPUs this is slower than
DeepSpeedCPUAdam but correct.
"""

from __future__ import annotations

from emoverse.recipe import StageConfig

# ZeRO-3 knobs, kept at values that suit small models as well as large ones.
STAGE3 = {
    # A saved model must be usable: gather the partitioned weights on save
    # (`save_16bit_model` / `_zero3_consolidated_16bit_state_dict`), else nothing is written.
    "stage3_gather_16bit_weights_on_model_save": True,
    # Parameters smaller than this stay whole on every rank (no gather per forward).
    "stage3_param_persistence_threshold": 10_000,
    "stage3_max_live_parameters": 100_000_000,
    "stage3_max_reuse_distance": 100_000_000,
    "stage3_prefetch_bucket_size": 5_000_000,
}


def micro_batch_size(stage: StageConfig, world_size: int) -> int:
    """Samples per worker per forward: the stage's global batch shared by the workers."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if stage.batch_size % world_size:
        raise ValueError(f"stage {stage.name!r}: batch_size {stage.batch_size} is not divisible "
                         f"by the world size {world_size} (batch_size is the global batch per "
                         "micro-step, shared equally by the workers)")
    return stage.batch_size // world_size


def deepspeed_config(stage: StageConfig, world_size: int) -> dict:
    """The DeepSpeed config dict realising `stage` on `world_size` workers."""
    if stage.strategy.kind != "deepspeed":
        raise ValueError(f"stage {stage.name!r} uses strategy {stage.strategy.kind!r}, "
                         "not deepspeed")
    micro = micro_batch_size(stage, world_size)
    strategy = stage.strategy
    zero: dict = {
        "stage": strategy.zero_stage,
        "overlap_comm": False,  # overlapping needs streams; on the CPU it only adds copies
        "contiguous_gradients": True,
        "reduce_bucket_size": 50_000_000,
    }
    if strategy.zero_stage <= 2:
        zero["allgather_bucket_size"] = 50_000_000
    if strategy.zero_stage == 3:
        zero.update(STAGE3)
    if strategy.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if strategy.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": micro * stage.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": stage.grad_accum,
        "gradient_clipping": stage.max_grad_norm,
        # bf16 keeps fp32 master weights in the ZeRO optimiser, as the recipe promises.
        "bf16": {"enabled": stage.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # Our torch AdamW is passed in; see the module docstring for why this is needed.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": False,
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own progress lines are noise
        "wall_clock_breakdown": False,
    }


def validate_deepspeed_config(cfg: dict, world_size: int) -> None:
    """Parse `cfg` with DeepSpeed's own `DeepSpeedConfig`; ValueError naming any problem.

    `DeepSpeedConfig` takes its world size from `deepspeed.comm`, or 1 without a process
    group (its `mpu` argument is only consulted after `dist.get_rank()` succeeds). So the
    parser gets the same config with `train_batch_size` scaled to the world size it will
    see, and the batch equation for the real `world_size` is checked here, in DeepSpeed's
    own terms.
    """
    from deepspeed.runtime.config import DeepSpeedConfig

    train = cfg.get("train_batch_size")
    micro = cfg.get("train_micro_batch_size_per_gpu")
    accum = cfg.get("gradient_accumulation_steps", 1)
    if not all(isinstance(v, int) and v > 0 for v in (train, micro, accum, world_size)):
        raise ValueError("DeepSpeed config needs positive integer train_batch_size, "
                         "train_micro_batch_size_per_gpu and gradient_accumulation_steps, got "
                         f"{train}, {micro}, {accum} (world size {world_size})")
    if train != micro * accum * world_size:
        raise ValueError(f"DeepSpeed config: train_batch_size {train} != micro batch {micro} x "
                         f"gradient_accumulation_steps {accum} x world size {world_size}")
    # The parser's world size: deepspeed.comm's once initialised (in a worker, after the
    # first `deepspeed.initialize`), else 1.
    import deepspeed.comm as ds_dist

    seen = ds_dist.get_world_size() if ds_dist.is_initialized() else 1
    try:
        parsed = DeepSpeedConfig({**cfg, "train_batch_size": micro * accum * seen})
    except Exception as exc:  # AssertionError, DeepSpeedConfigError, pydantic errors
        raise ValueError(f"DeepSpeed rejects the config: {type(exc).__name__}: {exc}") from exc
    zero = cfg.get("zero_optimization", {})
    if zero.get("offload_param") and parsed.zero_optimization_stage != 3:
        raise ValueError("DeepSpeed config: offload_param needs ZeRO stage 3, got stage "
                         f"{parsed.zero_optimization_stage}")
