"""The tiny model: a real HF directory; LoRA and full fine-tuning; prompt masking."""

import numpy as np
import pytest
import torch

from emoverse.model.checkpoint import (apply_trainable, is_checkpoint, load_model,
                                       load_processor, save_checkpoint)
from emoverse.recipe import LoraConfig, TrainableConfig
from emoverse.train.batching import IGNORE, Collator


def rows(n=2, frames=4, size=56):
    rng = np.random.default_rng(0)
    return {"prompt": np.array(["The person says: I love it\n<sentiment> Answer."] * n,
                               dtype=object),
            "target": np.array(["Positive.", "Negative."][:n], dtype=object),
            "frames": rng.integers(0, 255, (n, frames, size, size, 3), dtype=np.uint8)}


def test_tiny_model_loads_through_auto_classes(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert len(processor.tokenizer) <= 1100


def test_label_words_are_single_tokens(tiny_model):
    tok = load_processor(tiny_model).tokenizer
    for word in ["Positive", "Negative", "Joy", "Sadness", "Anger", "Surprise"]:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word


def test_collator_masks_the_prompt(tiny_model):
    processor = load_processor(tiny_model)
    batch = Collator(processor, max_length=512)(rows())
    labels, ids = batch["labels"], batch["input_ids"]
    tok = processor.tokenizer
    for i, answer in enumerate(["Positive.", "Negative."]):
        kept = ids[i][labels[i] != IGNORE]
        text = tok.decode(kept)
        assert text.startswith(answer) and text.rstrip().endswith("<|im_end|>")
    assert (labels[batch["attention_mask"] == 0] == IGNORE).all()
    assert "pixel_values_videos" in batch


def test_collator_rejects_samples_over_max_length(tiny_model):
    with pytest.raises(ValueError, match="over max_length"):
        Collator(load_processor(tiny_model), max_length=10)(rows())


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_forward_backward_updates_only_trainable_parts(tiny_model, mode):
    torch.manual_seed(0)
    cfg = TrainableConfig(mode=mode, lora=LoraConfig(r=4, alpha=8), vision=(mode == "full"))
    model = apply_trainable(load_model(tiny_model), cfg)
    batch = Collator(load_processor(tiny_model), max_length=512)(rows())
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(named[n].grad is not None for n in trainable
                             if "lora_B" in n or mode == "full")
    if mode == "lora":
        assert all("lora_" in n or "merger" in n for n in trainable)
        assert any("language_model" in n and "lora_A" in n for n in trainable)
        assert not any("visual.blocks" in n for n in trainable)
    else:
        assert len(trainable) == len(named)


def test_lora_checkpoint_round_trip(tiny_model, tmp_path):
    torch.manual_seed(0)
    model = apply_trainable(load_model(tiny_model), TrainableConfig(mode="lora"))
    for n, p in model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    processor = load_processor(tiny_model)
    ckpt = save_checkpoint(model, processor, tmp_path / "ck",
                           {"parent": str(tiny_model), "stage": "s"})
    assert is_checkpoint(ckpt) and (ckpt / "adapter" / "adapter_config.json").is_file()
    merged = load_model(ckpt)
    batch = Collator(processor, max_length=512)(rows())
    with torch.no_grad():
        model.eval()
        a = model(**batch).logits
        b = merged(**batch).logits
        base = load_model(tiny_model)(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, base, atol=1e-3)
