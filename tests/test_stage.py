"""A whole M2SE stage without Ray: `train` on a LocalSession over rows in memory, its
checkpoint and lineage, a LoRA stage on top, and a resumed stage that ends exactly where an
uninterrupted one does."""

import numpy as np
import pytest
import torch

from emoverse.model.checkpoint import is_checkpoint, load_model, read_lineage
from emoverse.recipe import MixtureEntry, StageConfig, TrainableConfig
from emoverse.train.stage import LocalSession, StageJob, train

WORDS = ["Positive.", "Negative."]


def rows(count: int = 16):
    rng = np.random.default_rng(0)
    return [{"prompt": f"The person says: {'great' if i % 2 else 'awful'}\n<sentiment> ?",
             "target": WORDS[i % 2],
             "frames": rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)}
            for i in range(count)]


def job(init_from, **stage):
    config = dict(name="s", mixture=[MixtureEntry(task="msa", weight=1)], epochs=4,
                  batch_size=4, lr=3e-3, warmup_steps=2, log_every=2, max_length=512,
                  trainable=TrainableConfig(mode="full", vision=True))
    config.update(stage)
    cfg = StageConfig(**config)
    return StageJob(stage=cfg, init_from=str(init_from), total_steps=16 * cfg.epochs // 4,
                    lineage={"stage": cfg.name, "parent": str(init_from)})


def test_a_stage_trains_and_checkpoints_without_ray(tiny_model, tmp_path):
    session = LocalSession(rows(), tmp_path / "s1")
    state = train(job(tiny_model), session)
    assert state.step == 16 and state.epoch == 4
    losses = [r["loss"] for r in session.reports if "final" not in r]
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
    final = session.latest_checkpoint()
    assert session.reports[-1]["final"] and is_checkpoint(final)
    lineage = read_lineage(final)
    assert lineage["step"] == 16 and lineage["stage"] == "s" and lineage["losses"]
    assert lineage["resumed_at_step"] is None
    assert (final / "model").is_dir() and (final / "processor").is_dir()
    load_model(final)


def test_a_lora_stage_on_the_first_saves_an_adapter(tiny_model, tmp_path):
    first = LocalSession(rows(8), tmp_path / "s1")
    train(job(tiny_model, epochs=1), first)
    second = LocalSession(rows(8), tmp_path / "s2")
    lora = TrainableConfig(mode="lora", lora={"r": 4, "alpha": 8})
    train(job(first.latest_checkpoint(), name="s2", epochs=1, trainable=lora), second)
    final = second.latest_checkpoint()
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert not (final / "model").exists()


class Interrupted(Exception):
    pass


class DiesAtStep(LocalSession):
    """A session whose process dies right after the checkpoint of `step` is kept."""

    def __init__(self, *args, step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.step = step

    def report(self, metrics, checkpoint=None, validate=False):
        super().report(metrics, checkpoint, validate)
        if checkpoint is not None and metrics["step"] == self.step:
            raise Interrupted


def test_a_resumed_stage_ends_where_an_uninterrupted_one_does(tiny_model, tmp_path):
    data = rows()
    stage = {"checkpoint_every": 3, "grad_accum": 2, "batch_size": 2}
    whole = LocalSession(data, tmp_path / "whole")
    train(job(tiny_model, **stage), whole)
    with pytest.raises(Interrupted):
        train(job(tiny_model, **stage), DiesAtStep(data, tmp_path / "cut", step=9))
    resumed = LocalSession(data, tmp_path / "cut")  # the same storage: resume from step 9
    state = train(job(tiny_model, **stage), resumed)
    assert state.step == 16
    assert read_lineage(resumed.latest_checkpoint())["resumed_at_step"] == 9
    a = load_model(whole.latest_checkpoint()).state_dict()
    b = load_model(resumed.latest_checkpoint()).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
