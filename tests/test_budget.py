"""Sequence budgets: visual tokens per clip as each recipe's processor produces them, and
stages whose longest sample does not fit refused before any work."""

import subprocess
import sys

import numpy as np
import pytest

from emoverse.emt.manifest import read_manifest
from emoverse.model.checkpoint import load_processor
from emoverse.model.families import family_processor, load_family, padded_tokenizer
from emoverse.model.inputs import Collator, fit_processor
from emoverse.model.internvl2 import native_tokenizer
from emoverse.model.vocabulary import instruction_corpus
from emoverse.recipe import apply_overrides, load_recipe
from emoverse.train.budget import BudgetError, check_budgets, sample_budget


def _clip_tokens(processor, media, token: str) -> int:
    """How many `token`s one clip of the recipe's frames and size becomes."""
    fit_processor(processor, media.size)
    clip = np.zeros((media.num_frames, media.size, media.size, 3), np.uint8)
    enc = Collator(processor, train=False)({"prompt": ["x"], "frames": [clip]})
    return int((enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids(token)).sum())


@pytest.fixture(scope="module")
def paper_processor(tmp_path_factory):
    """The processor `model convert` writes for InternVL2-4B (no weights needed)."""
    from emoverse.model.families import internvl_processor

    src = tmp_path_factory.mktemp("internvl2-tokenizer")
    padded_tokenizer(load_family("internvl2-4b"), instruction_corpus()).save_pretrained(src)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return internvl_processor(native_tokenizer(src, "phi3"), 448, mean, std)


def test_paper_recipe_clip_is_8_frames_of_256_tokens(paper_processor, demo_set):
    recipe = load_recipe("m2se-paper")
    assert _clip_tokens(paper_processor, recipe.media, "<IMG_CONTEXT>") == 8 * 256
    manifest = read_manifest(demo_set).to_pandas()
    unrestricted = apply_overrides(recipe, [f"stages.{i}.mixture.{j}.source='*'"
                                            for i, s in enumerate(recipe.stages)
                                            for j in range(len(s.mixture))])
    budgets = check_budgets(unrestricted, manifest, paper_processor)
    assert len(budgets) == 2
    for b in budgets:
        # 256 image tokens per frame plus "FrameN: <img>" ... "</img>\n" around each
        assert 8 * 256 < b.visual < 8 * 256 + 8 * 12
        assert b.total == b.visual + b.prompt + b.answer <= 4096


def test_qwen_recipe_clip_is_1024_tokens():
    recipe = load_recipe("m2se-qwen2.5-vl")
    family = load_family("qwen2.5-vl-3b-instruct")
    processor = family_processor(family, padded_tokenizer(family, instruction_corpus()))
    # 2 frames merged in time, 2x2 patches of 14 px in space: 8/2 x (448/28)^2
    assert _clip_tokens(processor, recipe.media, "<|video_pad|>") == 4 * 16 * 16


def test_tiny_recipe_budget_counts_the_clip_exactly(tiny_model, demo_set):
    recipe = load_recipe("m2se-tiny")
    processor = load_processor(tiny_model)
    # 4 frames of 56 px: 2 merged in time x (56/28)^2, plus vision start and end
    assert _clip_tokens(processor, recipe.media, "<|video_pad|>") == 2 * 4
    visual, prompt, answer, total = sample_budget(processor, "The person says: hi",
                                                  "Positive.", recipe.media)
    assert visual == 2 * 4 + 2 and total == visual + prompt + answer


def test_a_stage_that_does_not_fit_is_named_with_its_numbers(tiny_model, demo_set):
    recipe = load_recipe("m2se-tiny", ["stages.1.max_length=40"])
    manifest = read_manifest(demo_set).to_pandas()
    with pytest.raises(BudgetError) as err:
        check_budgets(recipe, manifest, load_processor(tiny_model))
    message = str(err.value)
    assert "stage 'stage2-reason-finetuning'" in message and "max_length is 40" in message
    assert "stages.stage2-reason-finetuning.max_length=" in message
    assert "stage1" not in message  # the stage that fits is not blamed
    with pytest.raises(ValueError, match="media.size=100: Qwen2-VL frames must be a multiple"):
        check_budgets(load_recipe("m2se-tiny", ["media.size=100"]), manifest,
                      load_processor(tiny_model))


def test_train_refuses_before_work_and_records_no_recipe(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "emoverse", "train", "m2se-tiny", "--run-dir", str(run),
         "data.demo_size=60", "stages.0.max_length=30"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "stage 'stage1-multitask-pretraining'" in proc.stderr
    assert "max_length is 30" in proc.stderr
    assert not (run / "recipe.yaml").exists() and not (run / "media").exists()
    assert not list(run.glob("checkpoints/*"))
