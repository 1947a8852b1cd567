"""DeepSpeed: configs derived from a stage pass DeepSpeed's own parser; ZeRO-2 trains and
resumes for real on two Ray Train workers."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from emoverse.recipe import MixtureEntry, StageConfig, StrategyConfig, TrainableConfig
from emoverse.train.deepspeed_config import deepspeed_config, validate_deepspeed_config


def ds_stage(batch_size=8, grad_accum=1, precision="fp32", **strategy):
    return StageConfig(name="s", mixture=[MixtureEntry(task="msa", weight=1)],
                       batch_size=batch_size, grad_accum=grad_accum, precision=precision,
                       max_grad_norm=0.5,
                       strategy=StrategyConfig(kind="deepspeed", **strategy))


@pytest.mark.parametrize("strategy,precision", [
    (dict(zero_stage=1), "fp32"),
    (dict(zero_stage=2), "fp32"),
    (dict(zero_stage=2, offload_optimizer=True), "bf16"),
    (dict(zero_stage=3), "fp32"),
    (dict(zero_stage=3, offload_optimizer=True, offload_params=True), "fp32"),
    (dict(zero_stage=3), "bf16"),
])
def test_generated_configs_pass_deepspeeds_parser(strategy, precision):
    cfg = deepspeed_config(ds_stage(batch_size=8, grad_accum=3, precision=precision,
                                    **strategy), world_size=2)
    validate_deepspeed_config(cfg, world_size=2)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"],
            cfg["train_batch_size"]) == (4, 3, 24)
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] is (precision == "bf16") and cfg["fp16"]["enabled"] is False
    assert "optimizer" not in cfg and "scheduler" not in cfg  # ours are passed in
    zero = cfg["zero_optimization"]
    assert zero["stage"] == strategy["zero_stage"]
    offload = {"device": "cpu", "pin_memory": True}
    assert zero.get("offload_optimizer") == (offload if strategy.get("offload_optimizer")
                                             else None)
    assert zero.get("offload_param") == (offload if strategy.get("offload_params") else None)
    assert (zero.get("stage3_gather_16bit_weights_on_model_save") is True) == (zero["stage"] == 3)
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # torch AdamW with offload


def test_batch_size_must_divide_among_the_workers():
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the world size 4"):
        deepspeed_config(ds_stage(batch_size=6), world_size=4)


def test_offloading_parameters_needs_zero3_and_ddp_has_no_deepspeed_config():
    with pytest.raises(ValidationError, match="offload_params needs zero_stage 3"):
        StrategyConfig(kind="deepspeed", zero_stage=2, offload_params=True)
    ddp = StageConfig(name="s", mixture=[MixtureEntry(task="msa", weight=1)])
    with pytest.raises(ValueError, match="not deepspeed"):
        deepspeed_config(ddp, world_size=1)


@pytest.mark.parametrize("change,message", [
    ({"train_batch_size": 10}, "train_batch_size 10 != micro batch 4"),
    ({"fp16": {"enabled": True}}, "bfloat16 and fp16"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
     "offload_param needs ZeRO stage 3"),
    ({"zero_optimization": {"stage": 2, "no_such_knob": 1}}, "no_such_knob"),
])
def test_validation_names_the_problem(change, message):
    cfg = {**deepspeed_config(ds_stage(precision="bf16"), world_size=2), **change}
    with pytest.raises(ValueError, match=message):
        validate_deepspeed_config(cfg, world_size=2)


def test_the_modules_do_not_import_deepspeed():
    code = ("import sys, emoverse.train.deepspeed_config, emoverse.train.deepspeed_engine, "
            "emoverse.train.engine; assert 'deepspeed' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.integration
def test_zero2_trains_and_resumes_on_two_ray_train_workers(tiny_model, tmp_path):
    """As the product does it: every worker saves its shard into its own directory, Ray
    merges them into one checkpoint; a second run resumes from it and must step exactly
    as the first run's engine would have."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    stage = ds_stage(batch_size=4, grad_accum=2, zero_stage=2).model_copy(update=dict(
        epochs=6, lr=3e-3, warmup_steps=1, min_lr_ratio=0.1, log_every=1,
        trainable=TrainableConfig(mode="full", vision=True)))

    def worker(config):
        """Everything imported here: the function is shipped to the workers by value."""
        import tempfile

        import numpy as np
        import ray.train
        import torch

        from emoverse.model.checkpoint import apply_trainable, load_model, load_processor
        from emoverse.recipe import StageConfig
        from emoverse.model.inputs import Collator
        from emoverse.train.deepspeed_engine import DeepSpeedEngine
        from emoverse.train.loop import train_epochs

        torch.set_num_threads(1)
        stage = StageConfig(**config["stage"])
        rank = ray.train.get_context().get_world_rank()
        processor = load_processor(config["model"])
        rng = np.random.default_rng(0)
        rows = [{"prompt": f"The person says: {'great' if i % 2 else 'awful'}\n<sentiment> ?",
                 "target": ["Positive.", "Negative."][i % 2],
                 "frames": rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)}
                for i in range(8)]
        collate = Collator(processor, 512)
        micro = stage.batch_size // 2
        batches = [collate({k: [r[k] for r in rows[i:i + micro]] for k in rows[0]})
                   for i in range(0, 8, micro)][rank::2]  # this worker's share

        torch.manual_seed(0)
        model = apply_trainable(load_model(config["model"]), stage.trainable)
        engine = DeepSpeedEngine(model, stage, config["steps"])
        assert engine.world_size == 2 and engine.zero_stage == 2
        metrics, resumed = {}, config["resume"] and ray.train.Checkpoint(config["resume"])
        if resumed is None:
            losses = []
            state = train_epochs(engine, lambda epoch: iter(batches), stage, config["steps"],
                                 on_log=lambda s, m: losses.append(m["loss"]))
            metrics.update(losses=losses, step=state.step)
        else:
            with resumed.as_directory() as directory:
                engine.load(directory)
        with tempfile.TemporaryDirectory() as directory:  # one per worker, merged by Ray
            if resumed is None:
                engine.save(directory, rank == 0)  # collective: every worker saves
            adam = engine.engine.basic_optimizer  # torch AdamW over this rank's partition
            states = [adam.state[p] for group in adam.param_groups for p in group["params"]]
            metrics.update(scheduler_step=engine.scheduler.last_epoch,
                           adam_steps=sorted({float(s["step"]) for s in states}),
                           exp_avg=sum(float(s["exp_avg"].double().sum()) for s in states))
            # One more optimizer step (two micro-batches) from the same batches.
            loss = engine.forward(batches[0])
            engine.backward(loss)
            metrics["after"] = [float(loss.detach()), engine.backward(engine.forward(batches[1]))]
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    def fit(name, resume=None):
        return TorchTrainer(
            worker,
            train_loop_config={"stage": stage.model_dump(), "model": str(tiny_model), "steps": 6,
                               "resume": resume},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name=name, storage_path=str(tmp_path / "ray")),
        ).fit()

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        first = fit("first")
        files = {p.name for p in (Path(first.checkpoint.path) / "engine").iterdir()}
        second = fit("second", first.checkpoint.path)
    finally:
        ray.shutdown()
    trained, resumed = first.metrics, second.metrics
    losses = trained["losses"]
    assert trained["step"] == 6 and len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses
    assert files >= {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                     "zero_pp_rank_1_mp_rank_00_optim_states.pt"}  # both workers' shards
    assert resumed["scheduler_step"] == trained["scheduler_step"] == 6
    assert resumed["adam_steps"] == trained["adam_steps"] == [6.0]
    assert resumed["exp_avg"] == pytest.approx(trained["exp_avg"], rel=1e-9)
    (loss_a, step_a), (loss_b, step_b) = trained["after"], resumed["after"]
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    assert step_b["lr"] == pytest.approx(step_a["lr"])
    assert step_b["grad_norm"] == pytest.approx(step_a["grad_norm"], rel=1e-5)
