"""`emoverse model convert`: an InternVL2-4B chat checkpoint (real names and shapes, one
layer per stack, random weights) into the native InternVL model, checked against an
independent forward pass of the source tensors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from emoverse.model.families import load_family, padded_tokenizer, reduced_config
from emoverse.model.inputs import Collator
from emoverse.model.internvl2 import ConversionError, convert, write_source
from emoverse.model.vocabulary import instruction_corpus
from tests.internvl2_reference import reference_logits


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    family = load_family("internvl2-4b")
    torch.manual_seed(0)
    return write_source(reduced_config(family, layers=1),
                        padded_tokenizer(family, instruction_corpus()),
                        tmp_path_factory.mktemp("internvl2") / "source")


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory) -> Path:
    return convert(source, tmp_path_factory.mktemp("native") / "model")


def test_source_has_internvl2_4b_names_and_shapes(source):
    shapes = {k: tuple(v.shape) for k, v in load_file(str(source / "model.safetensors")).items()}
    assert shapes["language_model.model.layers.0.self_attn.qkv_proj.weight"] == (9216, 3072)
    assert shapes["language_model.model.layers.0.mlp.gate_up_proj.weight"] == (16384, 3072)
    assert shapes["language_model.lm_head.weight"] == (32020, 3072)
    assert shapes["vision_model.encoder.layers.0.attn.qkv.weight"] == (3072, 1024)
    assert shapes["vision_model.embeddings.position_embedding"] == (1, 1025, 1024)
    assert shapes["mlp1.1.weight"] == (3072, 4096)
    assert json.loads((source / "config.json").read_text())["model_type"] == "internvl_chat"


def test_converted_logits_equal_the_source_forward(source, converted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(converted)).eval()
    processor = AutoProcessor.from_pretrained(str(converted))
    frames = np.random.default_rng(0).integers(0, 255, (2, 448, 448, 3), dtype=np.uint8)
    enc = Collator(processor, train=False)({"prompt": ["The person says: well, hello."],
                                            "frames": [frames]})
    image_id = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((enc["input_ids"] == image_id).sum()) == 2 * 256  # 256 tokens per 448 frame
    with torch.no_grad():
        native = model(**enc).logits
        reference = reference_logits(source, enc["input_ids"], enc["pixel_values"], image_id)
    torch.testing.assert_close(native, reference, rtol=1e-4, atol=1e-4)
    assert native.abs().max() > 0.1  # not a degenerate comparison


def test_converted_keeps_the_untied_head_tokens_and_processor(source, converted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(converted))
    assert not model.config.tie_word_embeddings
    head = load_file(str(source / "model.safetensors"))["language_model.lm_head.weight"]
    assert torch.equal(model.lm_head.weight.detach(), head)
    assert not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)
    processor = AutoProcessor.from_pretrained(str(converted))
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>", "<|end|>"]) == \
        [32011, 32012, 32013, 32007]
    assert processor.video_processor.size.height == 448
    assert list(processor.video_processor.image_mean) == pytest.approx([0.485, 0.456, 0.406])
    assert model.generation_config.eos_token_id == [32007, 32000]
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>\n<video>\nhi<|end|><|assistant|>\n"


def test_refuses_an_existing_output(source, converted):
    with pytest.raises(FileExistsError, match="not empty"):
        convert(source, converted)


def _copy_source(source: Path, dst: Path, edit=None, config=None) -> Path:
    dst.mkdir()
    for f in source.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(source / "model.safetensors"))
    if edit:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_wrong_size_tensor_is_named_and_nothing_is_written(source, tmp_path):
    def shrink(t):
        t["mlp1.1.weight"] = t["mlp1.1.weight"][:, :100].contiguous()

    bad = _copy_source(source, tmp_path / "bad", edit=shrink)
    with pytest.raises(ConversionError, match=r"model.safetensors: tensor mlp1.1.weight has "
                                              r"shape \[3072, 100\], config.json implies "
                                              r"\[3072, 4096\]"):
        convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_missing_tensor_and_missing_files_are_named(source, tmp_path):
    def drop(t):
        del t["language_model.model.norm.weight"]

    bad = _copy_source(source, tmp_path / "bad", edit=drop)
    with pytest.raises(ConversionError, match="missing.*language_model.model.norm.weight"):
        convert(bad, tmp_path / "out")
    (bad / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="no model.safetensors"):
        convert(bad, tmp_path / "out")
    with pytest.raises(ConversionError, match="config.json: missing"):
        convert(tmp_path / "nowhere", tmp_path / "out")


def test_unsupported_families_are_refused(source, tmp_path):
    def native(cfg):
        cfg["model_type"] = "qwen2_5_vl"

    def internlm(cfg):
        cfg["llm_config"]["architectures"] = ["InternLM2ForCausalLM"]

    for name, edit, message in (("a", native, "not an InternVL2 chat checkpoint"),
                                ("b", internlm, "InternLM2ForCausalLM is not supported")):
        bad = _copy_source(source, tmp_path / name, config=edit)
        with pytest.raises(ConversionError, match=message):
            convert(bad, tmp_path / f"out-{name}")


def test_cli_names_the_problem_and_exits_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "emoverse", "model", "convert",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"emoverse: error: {tmp_path / 'missing' / 'config.json'}: missing" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_training_on_an_unconverted_checkpoint_says_to_convert(source):
    from emoverse.model.checkpoint import load_model, load_processor

    for load in (load_model, load_processor):
        with pytest.raises(ValueError, match="InternVL2 chat checkpoint.*emoverse model convert"):
            load(source)


def test_a_qwen2_backbone_converts_with_its_tensors_unchanged(tmp_path):
    """InternVL2-1B's layout (Qwen2 LLM, tied head, ChatML), at toy widths."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = reduced_config(load_family("internvl2-4b"), layers=1)
    cfg["template"] = "Hermes-2"
    cfg["vision_config"].update(hidden_size=64, intermediate_size=128, num_attention_heads=4)
    cfg["llm_config"] = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                         "vocab_size": 32020, "hidden_size": 64, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "rope_theta": 1000000.0,
                         "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                         "max_position_embeddings": 4096}
    tokenizer = padded_tokenizer(load_family("internvl2-4b"), instruction_corpus())
    src = write_source(cfg, tokenizer, tmp_path / "src")
    out = convert(src, tmp_path / "native")
    model = AutoModelForImageTextToText.from_pretrained(str(out))
    assert model.config.text_config.model_type == "qwen2" and model.config.tie_word_embeddings
    source = load_file(str(src / "model.safetensors"))
    native = model.state_dict()
    for name in ("q_proj.weight", "q_proj.bias", "k_proj.bias", "o_proj.weight"):
        assert torch.equal(native[f"model.language_model.layers.1.self_attn.{name}"],
                           source[f"language_model.model.layers.1.self_attn.{name}"])
    assert torch.equal(model.lm_head.weight, source["language_model.model.embed_tokens.weight"])
    processor = AutoProcessor.from_pretrained(str(out))
    frames = np.zeros((1, 448, 448, 3), np.uint8)
    batch = Collator(processor)({"prompt": ["hi"], "target": ["Positive."], "frames": [frames]})
    assert torch.isfinite(model(**batch).loss)
    assert "<|im_start|>assistant\n" in processor.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
