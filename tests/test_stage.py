"""A whole M2SE stage without Ray: `train` on a LocalSession over rows in memory, its
checkpoint and lineage, a LoRA stage on top, a resumed stage that ends exactly where an
uninterrupted one does, and a stage that answers evaluation rows with the model it saved."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from emoverse.model.checkpoint import is_checkpoint, load_model, read_lineage
from emoverse.model.generation import AnswerGenerator, answer_rows
from emoverse.recipe import MixtureEntry, StageConfig, StrategyConfig, TrainableConfig
from emoverse.train.stage import (LocalSession, PredictJob, StageJob, read_predictions,
                                  share_of, train)

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


def eval_rows(count: int = 10) -> pd.DataFrame:
    data = rows(count)
    return pd.DataFrame({"sample_id": [f"e{i:02d}" for i in range(count)],
                         "task": ["msa" if i % 3 else "mer" for i in range(count)],
                         "prompt": [r["prompt"] for r in data],
                         "frames": [r["frames"] for r in data]})


def test_a_stage_answers_its_evaluation_rows_as_its_saved_checkpoint_would(tiny_model,
                                                                           tmp_path):
    """Full and LoRA stages: the answers written with the final checkpoint are the ones a
    model loaded from that checkpoint gives (adapters merged the same way)."""
    evals = eval_rows()
    predict = PredictJob(max_new_tokens={"msa": 3, "mer": 6}, batch_size=4)
    first = LocalSession(rows(), tmp_path / "s1", eval_rows=evals)
    train(replace(job(tiny_model), predict=predict), first)  # long enough to say words
    second = LocalSession(rows(8), tmp_path / "s2", eval_rows=evals)
    # the tiny model ties lm_head to the embeddings; the adapter trains its own lm_head
    lora = TrainableConfig(mode="lora", lora={"r": 4, "alpha": 8, "modules_to_save": ["lm_head"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(replace(job(first.latest_checkpoint(), name="s2", epochs=1, trainable=lora),
                      predict=predict), second)
    assert not [w for w in caught if "tie" in str(w.message) or "checkpointing" in str(w.message)]
    for session in (first, second):
        final = session.latest_checkpoint()
        answers = read_predictions(final).sort_values("sample_id", ignore_index=True)
        loaded = AnswerGenerator(str(final), predict.max_new_tokens)
        expected = answer_rows(loaded, evals, 4).sort_values("sample_id", ignore_index=True)
        pd.testing.assert_frame_equal(answers, expected)
        assert answers.prediction.str.len().min() > 0
    assert read_predictions(tmp_path) is None  # no answers there


def test_each_row_is_one_process_share_whatever_the_order():
    evals = eval_rows(50)
    for world in (1, 2, 3):
        shares = [share_of(evals.sample(frac=1, random_state=r), r, world) for r in range(world)]
        ids = sorted(i for share in shares for i in share.sample_id)
        assert ids == sorted(evals.sample_id)
    assert all(len(share_of(evals, r, 2)) > 10 for r in (0, 1))


def test_a_predict_job_travels_in_the_config_and_needs_ddp(tiny_model):
    predict = PredictJob(max_new_tokens={"msa": 3}, batch_size=8, cache_dir="/cache",
                         split="valid", tasks=("msa", "fer"))
    config = replace(job(tiny_model), predict=predict).to_config()
    assert StageJob.from_config(config).predict == predict
    assert StageJob.from_config(json.loads(json.dumps(config))).predict == predict
    assert StageJob.from_config(job(tiny_model).to_config()).predict is None
    with pytest.raises(ValueError, match="strategy.kind=ddp"):
        replace(job(tiny_model, strategy=StrategyConfig(kind="deepspeed")), predict=predict)


def test_an_evaluation_takes_a_stage_answers_only_if_each_clip_has_exactly_one(tmp_path):
    from emoverse.drivers.evaluation import stage_answers
    from emoverse.media.cache import clip_files
    from emoverse.train.stage import PREDICTIONS

    clips = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"],
                          "task": ["msa", "msa", "mer", "msa", "eri"],
                          "split": ["test", "test", "test", "train", "test"],
                          "ok": [True, True, True, True, True]})
    (tmp_path / "cache" / "clips").mkdir(parents=True)
    clips.to_parquet(f"{clip_files(tmp_path / 'cache')}/0.parquet")
    answers = tmp_path / "checkpoint" / PREDICTIONS
    answers.mkdir(parents=True)
    # none written (a stage resumed from a checkpoint of before): the caller answers itself
    assert stage_answers(answers.parent, tmp_path / "cache", "test", ("msa",)) is None
    share = pd.DataFrame({"sample_id": ["a", "c"], "task": ["msa", "mer"],
                          "prediction": ["Positive.", "joy"]})
    share.to_parquet(answers / "rank-00000.parquet")
    with pytest.raises(ValueError, match="do not cover the 'test' clips of mer, msa exactly"):
        stage_answers(answers.parent, tmp_path / "cache", "test", ("mer", "msa"))
    share.iloc[:1].assign(sample_id="b").to_parquet(answers / "rank-00001.parquet")
    got = stage_answers(answers.parent, tmp_path / "cache", "test", ("mer", "msa"))
    assert sorted(got.sample_id) == ["a", "b", "c"]
    share.iloc[:1].to_parquet(answers / "rank-00002.parquet")  # "a" twice
    with pytest.raises(ValueError, match="4 answers, 3 distinct"):
        stage_answers(answers.parent, tmp_path / "cache", "test", ("mer", "msa"))
