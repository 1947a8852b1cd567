"""Shipped real-model families: the facts build the published model sizes, special tokens
sit at their real ids, and `model init --like` writes a model that loads and trains."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from emoverse.model.families import (family_names, family_processor, load_family,
                                     padded_tokenizer, reduced_config)
from emoverse.model.vocabulary import instruction_corpus

# Published parameter counts (model cards), which the shipped fields must reproduce.
PUBLISHED = {"internvl2-4b": 4.147e9, "internvl3-1b-hf": 0.802e9,
             "qwen2.5-vl-3b-instruct": 3.755e9, "smolvlm2-256m-video-instruct": 0.256e9}


def test_the_issue_families_ship():
    assert set(PUBLISHED) <= set(family_names())


def _native_config(family, layers=None):
    from transformers import AutoConfig

    cfg = reduced_config(family, layers)
    if family.format == "internvl_chat":
        from emoverse.model.internvl2 import native_config

        return native_config(cfg, family.tokens["<IMG_CONTEXT>"])
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_family_facts_build_the_published_size(name):
    from transformers import AutoModelForImageTextToText

    family = load_family(name)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(_native_config(family))
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED[name], rel=0.005)
    with torch.device("meta"):
        small = AutoModelForImageTextToText.from_config(_native_config(family, layers=1))
    text = small.config.text_config
    assert text.num_hidden_layers == 1
    assert text.hidden_size == (family.config.get("text_config") or
                                family.config["llm_config"])["hidden_size"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_tokenizer_and_processor_carry_the_real_ids_and_pixels(name):
    family = load_family(name)
    tokenizer = padded_tokenizer(family, instruction_corpus())
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in family.tokens} == family.tokens
    assert len(tokenizer) >= family.vocab_size
    if family.format == "internvl_chat":  # no processor in the source: convert writes one
        with pytest.raises(ValueError, match="model convert"):
            family_processor(family, tokenizer)
        return
    processor = family_processor(family, tokenizer)
    assert type(processor).__name__.startswith(
        {"internvl": "InternVL", "qwen2_5_vl": "Qwen2_5_VL",
         "smolvlm": "SmolVLM"}[family.config["model_type"]])
    if "size" in family.processor and "InternVL" in type(processor).__name__:
        assert processor.video_processor.size.height == 448 == family.processor["size"]
        assert list(processor.video_processor.image_mean) == family.processor["image_mean"]
        assert processor.image_seq_length == 256


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown model family 'x'; known: internvl2-4b"):
        load_family("x")


def test_init_like_writes_a_model_that_loads_and_trains(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from emoverse.model.inputs import Collator

    out = tmp_path / "smol"
    proc = subprocess.run([sys.executable, "-m", "emoverse", "model", "init", "--like",
                           "smolvlm2-256m-video-instruct", "--layers", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "at real width, 1 layer(s) per stack" in proc.stdout
    model = AutoModelForImageTextToText.from_pretrained(str(out))
    processor = AutoProcessor.from_pretrained(str(out))
    assert model.config.text_config.hidden_size == 576 and len(model.model.text_model.layers) == 1
    frames = np.zeros((2, 512, 512, 3), np.uint8)
    batch = Collator(processor)({"prompt": ["The person says: hi"], "target": ["Positive."],
                                 "frames": [frames]})
    image = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image).sum()) == 2 * 64  # 64 tokens per 512 px frame
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_the_omni_thinker_is_its_published_parts_and_hears():
    """Qwen2.5-Omni-7B's thinker at real width: its language stack is Qwen2.5-7B's
    published 7.61B, its vision tower Qwen2.5-VL-7B's, its audio encoder Whisper-large-v3's
    encoder; the processor takes 16 kHz audio as 128 mel bins, the tokens sit at their ids."""
    from transformers import AutoModelForImageTextToText

    family = load_family("qwen2.5-omni-7b")
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(_native_config(family))
    parts = {n: sum(p.numel() for p in c.parameters()) for n, c in model.model.named_children()}
    text = parts["language_model"] + sum(p.numel() for p in model.lm_head.parameters())
    assert text == pytest.approx(7.616e9, rel=0.002)
    assert parts["visual"] == pytest.approx(0.6766e9, rel=0.002)
    assert parts["audio_tower"] == pytest.approx(0.6396e9, rel=0.002)
    tokenizer = padded_tokenizer(family, instruction_corpus())
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in family.tokens} == family.tokens
    processor = family_processor(family, tokenizer)
    assert processor.feature_extractor.feature_size == 128
    assert processor.audio_token_id == family.config["audio_token_index"] == 151646


@pytest.mark.integration
def test_the_omni_thinker_at_one_layer_trains_on_frames_and_audio(tmp_path):
    from emoverse.model.checkpoint import load_model, load_processor
    from emoverse.model.families import write_like
    from emoverse.model.inputs import Collator, fit_processor

    out = write_like("qwen2.5-omni-7b", tmp_path / "omni", instruction_corpus(), layers=1)
    processor, model = fit_processor(load_processor(out), 224), load_model(out)
    assert model.config.text_config.hidden_size == 3584
    batch = Collator(processor, 4096, hears=True)({
        "prompt": ["The person says: okay"], "target": ["Positive."],
        "frames": [np.zeros((8, 224, 224, 3), np.uint8)],
        "audio": [np.zeros(5 * 16000, np.int16)], "audio_samples": [5 * 16000]})
    ids = batch["input_ids"]
    assert int((ids == 151646).sum()) == 125  # 25 audio tokens a second
    assert int((ids == 151656).sum()) == 256  # 8 frames at 224 px: 4 x 64
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
