"""The training loop without Ray: loss falls; schedule; callbacks."""

import numpy as np
import torch

from emoverse.model.checkpoint import apply_trainable, load_model, load_processor
from emoverse.recipe import MixtureEntry, StageConfig, TrainableConfig
from emoverse.train.batching import Collator
from emoverse.train.loop import make_optimizer, train_epochs


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
    state = train_epochs(model, epoch_batches, cfg, total_steps=12,
                         on_log=lambda s, m: logged.append(m["loss"]),
                         on_epoch_end=lambda s, m: epochs.append(s.epoch))
    assert state.step == 12 and epochs == [1, 2, 3, 4, 5, 6]
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
