"""The training loop without Ray: loss falls; schedule; callbacks; resume."""

import numpy as np
import torch

from emoverse.model.checkpoint import apply_trainable, load_model, load_processor
from emoverse.recipe import MixtureEntry, StageConfig, TrainableConfig
from emoverse.model.inputs import Collator
from emoverse.train.engine import TorchEngine, make_optimizer
from emoverse.train.loop import LoopState, train_epochs


def stage(**over):
    base = dict(name="s", mixture=[MixtureEntry(task="msa", weight=1)], epochs=6, batch_size=4,
                lr=3e-3, warmup_steps=2, min_lr_ratio=0.1, log_every=1,
                trainable=TrainableConfig(mode="full", vision=True))
    base.update(over)
    return StageConfig(**base)


def test_loss_falls_on_a_tiny_task(tiny_model):
    torch.manual_seed(0)
    processor = load_processor(tiny_model)
    rng = np.random.default_rng(0)
    words = ["Positive.", "Negative."]
    rows = [{"prompt": f"The person says: {'great' if i % 2 else 'awful'}\n<sentiment> ?",
             "target": words[i % 2],
             "frames": rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)} for i in range(8)]
    collate = Collator(processor, 512)

    def epoch_batches(epoch):
        for i in range(0, 8, 4):
            chunk = rows[i:i + 4]
            yield collate({k: [r[k] for r in chunk] for k in chunk[0]})

    cfg = stage()
    model = apply_trainable(load_model(tiny_model), cfg.trainable)
    logged, epochs = [], []
    state = train_epochs(TorchEngine(model, cfg, 12), epoch_batches, cfg, total_steps=12,
                         on_log=lambda s, m: logged.append(m["loss"]),
                         on_checkpoint=lambda s, m, final: epochs.append((s.epoch, final)))
    assert state.step == 12
    assert epochs == [(1, False), (2, False), (3, False), (4, False), (5, False), (6, True)]
    assert state.samples == 48
    assert np.mean(logged[-3:]) < 0.5 * np.mean(logged[:2])


def test_schedule_warms_up_then_decays_to_the_floor():
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, stage(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), 20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert abs(sched.get_last_lr()[0] - 0.1) < 1e-6


def numbered_batches(count: int):
    """Batches of a one-parameter model whose loss is the batch number times the weight."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids):
            return type("Out", (), {"loss": self.w * input_ids.float().mean()})()

    return Model(), lambda epoch: ({"input_ids": torch.full((2, 1), i + 1)} for i in range(count))


def test_resume_from_a_mid_epoch_checkpoint_matches_an_uninterrupted_run(tmp_path):
    cfg = stage(epochs=2, checkpoint_every=3, grad_accum=2, warmup_steps=0)
    model, batches = numbered_batches(8)  # 4 steps an epoch, 8 in all
    full = train_epochs(TorchEngine(model, cfg, 8), batches, cfg, total_steps=8)
    reference = model.w.item()

    model, batches = numbered_batches(8)
    engine = TorchEngine(model, cfg, 8)
    saved = []

    def save_then_crash(state, metrics, final):
        engine.save(tmp_path, is_main=True)
        saved.append(state.to_dict())
        if state.step == 6:  # step 6 is mid-epoch 2: "the worker dies here"
            raise RuntimeError("injected")

    try:
        train_epochs(engine, batches, cfg, total_steps=8, on_checkpoint=save_then_crash)
    except RuntimeError:
        pass
    assert [s["step"] for s in saved] == [3, 4, 6] and saved[-1]["epoch_step"] == 2

    model, batches = numbered_batches(8)
    engine = TorchEngine(model, cfg, 8)
    engine.load(tmp_path)
    resumed = train_epochs(engine, batches, cfg, total_steps=8,
                           state=LoopState.from_dict(saved[-1]))
    assert resumed.step == full.step == 8 and resumed.epoch == 2
    assert abs(model.w.item() - reference) < 1e-6  # same optimizer, schedule and data


def test_max_steps_ends_the_stage_early_with_a_final_checkpoint():
    cfg = stage(epochs=5)
    model, batches = numbered_batches(4)
    finals = []
    state = train_epochs(TorchEngine(model, cfg, 6), batches, cfg, total_steps=6,
                         on_checkpoint=lambda s, m, final: finals.append((s.step, final)))
    assert state.step == 6 and finals[-1] == (6, True) and sum(f for _, f in finals) == 1
