"""The tiny models (every architecture): real HF directories; LoRA and full fine-tuning;
prompt masking; a short training run; greedy generation."""

import json

import numpy as np
import pytest
import torch

from emoverse.model.architectures import ARCHITECTURES, get_architecture
from emoverse.model.checkpoint import (PROJECTORS, _is_audio, _is_projector, _is_unused, _is_vision,
                                       apply_trainable,
                                       is_checkpoint, load_model, load_processor,
                                       save_checkpoint)
from emoverse.recipe import LoraConfig, MixtureEntry, StageConfig, TrainableConfig
from emoverse.model.inputs import IGNORE, Collator

PROMPTS = ["The person says: I love it\n<sentiment> Answer.",
           "The person says: this is the worst day of my whole life\n<sentiment> Answer."]
ANSWERS = ["Positive.", "Negative."]


def rows(n=2, frames=4, size=56):
    rng = np.random.default_rng(0)
    return {"prompt": np.array(PROMPTS[:n], dtype=object),
            "target": np.array(ANSWERS[:n], dtype=object),
            "frames": rng.integers(0, 255, (n, frames, size, size, 3), dtype=np.uint8)}


def test_tiny_model_loads_through_auto_classes(arch_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    arch, path = arch_model
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == ARCHITECTURES[arch].model_class
    assert type(AutoProcessor.from_pretrained(path)).__name__ == ARCHITECTURES[arch].processor_class
    # load_processor: AutoProcessor with the frame size the directory was written with in
    # force (Qwen2.5-Omni's processor class would resize frames to its pretraining size)
    processor = load_processor(path)
    # an architecture that hears carries a feature extractor for the audio
    assert (getattr(processor, "feature_extractor", None) is not None) == ARCHITECTURES[arch].hears
    tok = processor.tokenizer
    assert len(tok) <= 1100
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    # token ids agree between tokenizer, processor, model config and generation config
    text = model.config.text_config
    assert text.vocab_size == len(tok)
    assert text.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert text.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.image_token_id == processor.image_token_id
    # a 4-frame clip costs tens of visual tokens, not hundreds
    batch = Collator(processor, max_length=512, train=False)(rows(n=1))
    visual = {model.config.image_token_id, getattr(model.config, "video_token_id", None)}
    n_visual = sum(int(i) in visual for i in batch["input_ids"][0])
    assert 8 <= n_visual <= 64, n_visual


def test_the_video_reaches_the_model(arch_model):
    path = arch_model[1]
    model, collate = load_model(path).eval(), Collator(load_processor(path), max_length=512)
    a, b = rows(), rows()
    b["frames"] = 255 - b["frames"]
    with torch.no_grad():
        la, lb = model(**collate(a)).logits, model(**collate(b)).logits
    assert not torch.allclose(la, lb, atol=1e-4)


def test_unknown_architecture_is_refused(tmp_path):
    from emoverse.model.tiny import write_tiny_model

    with pytest.raises(ValueError, match="unknown tiny architecture"):
        write_tiny_model(tmp_path, ["a b c"], arch="gpt-2")
    assert get_architecture("qwen2-vl").title == "Qwen2-VL"


def test_writing_the_tiny_model_draws_no_progress_bar(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    from emoverse.model.tiny import write_tiny_model

    hf_logging.enable_progress_bar()
    write_tiny_model(tmp_path, ["the person says hello", "a smile"])
    assert "Writing model shards" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # as the caller had them


def test_label_words_are_single_tokens(arch_model):
    tok = load_processor(arch_model[1]).tokenizer
    for word in ["Positive", "Negative", "Joy", "Sadness", "Anger", "Surprise"]:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word


def test_collator_masks_the_prompt(arch_model):
    processor = load_processor(arch_model[1])
    tok = processor.tokenizer
    batch = Collator(processor, max_length=512)(rows())
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any(), "the prompts differ in length, so one row must be padded"
    for i, answer in enumerate(ANSWERS):
        expected = tok(f"{answer}{tok.eos_token}\n", add_special_tokens=False).input_ids
        kept = (labels[i] != IGNORE).nonzero().flatten()
        # exactly the answer, its end-of-turn token and newline: the last real tokens
        real = mask[i].nonzero().flatten()
        assert kept.tolist() == real[-len(expected):].tolist()
        assert labels[i][kept].tolist() == ids[i][kept].tolist() == expected
        assert tok.decode(ids[i][kept]).startswith(answer)
    assert (labels[mask == 0] == IGNORE).all()
    assert any(k.startswith("pixel_values") for k in batch)


def test_collator_pads_left_for_generation(arch_model):
    processor = load_processor(arch_model[1])
    batch = Collator(processor, train=False)(rows())
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()


def test_collator_rejects_samples_over_max_length(arch_model):
    with pytest.raises(ValueError, match="over max_length"):
        Collator(load_processor(arch_model[1]), max_length=10)(rows())


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_forward_backward_updates_only_trainable_parts(arch_model, mode):
    path = arch_model[1]
    torch.manual_seed(0)
    cfg = TrainableConfig(mode=mode, lora=LoraConfig(r=4, alpha=8), vision=(mode == "full"))
    model = apply_trainable(load_model(path), cfg)
    batch = Collator(load_processor(path), max_length=512)(rows())
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(named[n].grad is not None for n in trainable
                             if "lora_B" in n or mode == "full")
    if mode == "lora":
        assert all("lora_" in n or _is_projector(n) for n in trainable)
        assert any("language_model" in n and "lora_A" in n for n in trainable)
        assert any(_is_projector(n) for n in trainable)
        assert not any(_is_vision(n) and not _is_projector(n) for n in trainable)
    else:  # all but an audio encoder, which only a stage that hears trains
        assert trainable == {n for n in named if not _is_audio(n) and not _is_unused(n)}


def test_full_mode_without_vision_freezes_only_the_vision_tower(arch_model):
    model = apply_trainable(load_model(arch_model[1]), TrainableConfig(mode="full"))
    for n, p in model.named_parameters():
        assert p.requires_grad == ((not _is_vision(n) or _is_projector(n))
                                   and not _is_audio(n) and not _is_unused(n)), n
    assert any(_is_projector(n) and p.requires_grad for n, p in model.named_parameters())


def test_lora_checkpoint_round_trip(arch_model, tmp_path):
    path = arch_model[1]
    torch.manual_seed(0)
    cfg = TrainableConfig(mode="lora", lora=LoraConfig(r=4, alpha=8, modules_to_save=("lm_head",)))
    model = apply_trainable(load_model(path), cfg)
    for n, p in model.named_parameters():  # make the adapter and the saved copies non-trivial
        if "lora_B" in n or ("modules_to_save" in n and _is_projector(n)):
            torch.nn.init.normal_(p, std=0.5)
    processor = load_processor(path)
    ckpt = save_checkpoint(model, processor, tmp_path / "ck", {"parent": str(path), "stage": "s"})
    assert is_checkpoint(ckpt)
    adapter_cfg = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    assert "lm_head" in adapter_cfg["modules_to_save"]
    assert set(adapter_cfg["modules_to_save"]) & set(PROJECTORS)
    merged = load_model(ckpt)
    assert not hasattr(merged, "peft_config")
    assert type(load_processor(ckpt)).__name__ == type(processor).__name__
    batch = Collator(processor, max_length=512)(rows())
    with torch.no_grad():
        model.eval()
        a = model(**batch).logits
        b = merged(**batch).logits
        base = load_model(path)(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, base, atol=1e-3)


def test_loss_falls_on_a_tiny_task(arch_model):
    from emoverse.train.engine import TorchEngine
    from emoverse.train.loop import train_epochs

    path = arch_model[1]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [{"prompt": f"The person says: {'great' if i % 2 else 'awful'}\n<sentiment> ?",
             "target": ANSWERS[1 - i % 2],
             "frames": rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)} for i in range(8)]
    collate = Collator(load_processor(path), 512)
    batches = [collate({k: [r[k] for r in data[i:i + 4]] for k in data[0]}) for i in (0, 4)]
    cfg = StageConfig(name="s", mixture=[MixtureEntry(task="msa", weight=1)], epochs=6,
                      batch_size=4, lr=3e-3, warmup_steps=2, min_lr_ratio=0.1, log_every=1,
                      trainable=TrainableConfig(mode="full", vision=True))
    model = apply_trainable(load_model(path), cfg.trainable)
    logged = []
    state = train_epochs(TorchEngine(model, cfg, 12), lambda epoch: iter(batches), cfg,
                         total_steps=12, on_log=lambda s, m: logged.append(m["loss"]))
    assert state.step == 12 and state.samples == 48
    assert np.mean(logged[-3:]) < 0.5 * np.mean(logged[:2])


def test_greedy_generation_returns_strings(arch_model, tmp_path):
    from emoverse.model.generation import AnswerGenerator

    path = arch_model[1]
    gen = AnswerGenerator(str(path), max_new_tokens=3, torch_threads=torch.get_num_threads())
    answers = gen.generate(rows())
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # and from a LoRA stage checkpoint (adapter merged on load)
    model = apply_trainable(load_model(path), TrainableConfig(mode="lora"))
    ckpt = save_checkpoint(model, load_processor(path), tmp_path / "ck",
                           {"parent": str(path), "stage": "s"})
    answers = AnswerGenerator(str(ckpt), max_new_tokens=3,
                              torch_threads=torch.get_num_threads()).generate(rows(n=1))
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_per_task_budgets_answer_each_row_as_its_task_alone_would(arch_model):
    """A batch of mixed tasks is generated task by task, each within its own budget."""
    from emoverse.model.generation import AnswerGenerator

    path = str(arch_model[1])
    two = rows(n=2)
    batch = {"prompt": np.array([*two["prompt"], two["prompt"][0]], dtype=object),
             "frames": np.concatenate([two["frames"], two["frames"][1:]]),
             "task": np.array(["msa", "eri", "msa"], dtype=object)}
    mixed = AnswerGenerator(path, {"msa": 2, "eri": 5}, torch.get_num_threads()).generate(batch)

    def alone(indices, budget):
        part = {k: batch[k][indices] for k in ("prompt", "frames")}
        return AnswerGenerator(path, budget, torch.get_num_threads()).generate(part)

    assert mixed[0::2] == alone([0, 2], 2) and mixed[1:2] == alone([1], 5)


def test_answer_budgets_are_per_task_from_the_split_targets(arch_model):
    import pandas as pd

    from emoverse.model.generation import answer_budgets
    from emoverse.model.checkpoint import load_processor

    path = arch_model[1]
    manifest = pd.DataFrame({"task": ["msa", "eri", "eri", "msa"],
                             "split": ["test", "test", "test", "train"],
                             "target": ["Positive.", "short", "a much longer explanation "
                                        "of why the speaker is sad", "x " * 50]})
    budgets = answer_budgets(manifest, path, "test")
    tokens = load_processor(path).tokenizer
    longest = len(tokens(manifest.target[2], add_special_tokens=False).input_ids)
    assert budgets == {"eri": longest + 4,
                       "msa": len(tokens("Positive.", add_special_tokens=False).input_ids) + 4}
