"""InternVL2 chat checkpoints (remote code, `model_type: internvl_chat`) into the native
`InternVLForConditionalGeneration` format that transformers 5 loads.

`emoverse model convert SRC --out DST`

The paper's base, `OpenGVLab/InternVL2-4B`, ships remote code written for transformers
< 4.42 and is in no auto mapping, and transformers' own conversion script covers only
Qwen2 and InternLM2 backbones. This reads the safetensors directly (no remote code runs)
and writes a directory with config, weights, processor (448 px tiles, ImageNet
statistics), tokenizer with InternVL's named image tokens and `<video>`, the source's
chat template, and the source's untied output layer kept untied.

Backbones: Phi-3 (InternVL2-4B) and Qwen2 (InternVL2-1B), whose language-model tensors
already carry the native names; InternLM2 (fused `wqkv`) is refused with a clear error.
The vision side (InternViT) splits each fused `qkv` into q/k/v projections.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from emoverse.model.architectures import IMAGENET_MEAN, IMAGENET_STD
from emoverse.model.chat_templates import TEMPLATES
from emoverse.model.families import INTERNVL_NAMED, internvl_processor

BACKBONES = {"Phi3ForCausalLM": "phi3", "Qwen2ForCausalLM": "qwen2"}
TEMPLATE_OF = {"phi3-chat": "phi3", "Hermes-2": "chatml-internvl",
               "internvl2_5": "chatml-internvl"}
# Source config keys that describe remote code or a runtime, not the model.
DROPPED = {"auto_map", "_name_or_path", "attn_implementation", "_attn_implementation",
           "use_flash_attn", "torch_dtype", "dtype", "transformers_version"}
VISION_RENAMES = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.patch_embedding\.",
     "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.embeddings\.position_embedding$",
     "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.",
     r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls([12])$",
     r"model.vision_tower.encoder.layer.\1.lambda_\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.",
     r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.",
     r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"model.vision_tower.encoder.layer.\1.mlp."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]
FUSED_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted; the message names file and tensor."""


def read_source_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path}: missing (is {src} a model directory?)")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "internvl_chat":
        raise ConversionError(
            f"{path}: model_type {cfg.get('model_type')!r} is not an InternVL2 chat checkpoint "
            "(internvl_chat); native checkpoints (internvl, qwen2_5_vl, ...) load as they are")
    arch = (cfg.get("llm_config", {}).get("architectures") or ["?"])[0]
    if arch not in BACKBONES:
        raise ConversionError(f"{path}: language model {arch} is not supported; supported: "
                              f"{', '.join(BACKBONES)}")
    vision = cfg["vision_config"]
    if vision.get("qk_normalization"):
        raise ConversionError(f"{path}: vision_config.qk_normalization (InternViT-6B) is not "
                              "supported; InternViT-300M checkpoints are")
    if cfg.get("ps_version", "v2") != "v2":
        raise ConversionError(f"{path}: ps_version {cfg['ps_version']!r}: the native model's "
                              "pixel shuffle is v2")
    return cfg


def tokens_per_tile(cfg: dict) -> int:
    patch = cfg["vision_config"]["patch_size"]
    return int((cfg["force_image_size"] // patch) ** 2 * cfg["downsample_ratio"] ** 2)


def native_config(cfg: dict, image_token_id: int):
    """The `InternVLConfig` equivalent of source config `cfg`."""
    from transformers import InternVLConfig

    llm = {k: v for k, v in cfg["llm_config"].items() if k not in DROPPED}
    llm["model_type"] = BACKBONES[llm["architectures"][0]]
    if llm.get("rope_scaling") and "original_max_position_embeddings" in llm:
        # transformers 5 validates longrope ("su") with the trained length inside it.
        original = llm["original_max_position_embeddings"]
        llm["rope_scaling"] = {**llm["rope_scaling"], "original_max_position_embeddings": original,
                               "factor": llm["max_position_embeddings"] / original}
    v = cfg["vision_config"]
    vision = dict(hidden_size=v["hidden_size"], num_hidden_layers=v["num_hidden_layers"],
                  num_attention_heads=v["num_attention_heads"],
                  intermediate_size=v["intermediate_size"], image_size=v["image_size"],
                  patch_size=v["patch_size"], hidden_act=v.get("hidden_act", "gelu"),
                  layer_norm_eps=v.get("layer_norm_eps", 1e-6),
                  norm_type=v.get("norm_type", "layer_norm"),
                  attention_bias=v.get("qkv_bias", True), use_qk_norm=False)
    return InternVLConfig(
        text_config=llm, vision_config=vision, image_token_id=image_token_id,
        image_seq_length=tokens_per_tile(cfg), downsample_ratio=cfg["downsample_ratio"],
        projector_hidden_act="gelu", vision_feature_layer=cfg.get("select_layer", -1),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)))


def source_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor an InternVL2 checkpoint with config `cfg` holds, with its shape."""
    v, llm = cfg["vision_config"], cfg["llm_config"]
    d, inner, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    grid = (v["image_size"] // p) ** 2
    shapes = {"vision_model.embeddings.class_embedding": (1, 1, d),
              "vision_model.embeddings.patch_embedding.weight": (d, 3, p, p),
              "vision_model.embeddings.patch_embedding.bias": (d,),
              "vision_model.embeddings.position_embedding": (1, grid + 1, d)}
    for i in range(v["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}."
        shapes.update({pre + "attn.qkv.weight": (3 * d, d), pre + "attn.proj.weight": (d, d),
                       pre + "attn.proj.bias": (d,), pre + "ls1": (d,), pre + "ls2": (d,),
                       pre + "mlp.fc1.weight": (inner, d), pre + "mlp.fc1.bias": (inner,),
                       pre + "mlp.fc2.weight": (d, inner), pre + "mlp.fc2.bias": (d,)})
        shapes.update({pre + f"norm{n}.{w}": (d,) for n in (1, 2) for w in ("weight", "bias")})
        if v.get("qkv_bias", True):
            shapes[pre + "attn.qkv.bias"] = (3 * d,)
    h, vocab = llm["hidden_size"], llm["vocab_size"]
    merged = int(d / cfg["downsample_ratio"] ** 2)
    shapes.update({"mlp1.0.weight": (merged,), "mlp1.0.bias": (merged,),
                   "mlp1.1.weight": (h, merged), "mlp1.1.bias": (h,),
                   "mlp1.3.weight": (h, h), "mlp1.3.bias": (h,),
                   "language_model.model.embed_tokens.weight": (vocab, h),
                   "language_model.model.norm.weight": (h,)})
    if not llm.get("tie_word_embeddings", False):
        shapes["language_model.lm_head.weight"] = (vocab, h)
    for i in range(llm["num_hidden_layers"]):
        shapes.update(_decoder_shapes(llm, f"language_model.model.layers.{i}."))
    return shapes


def _decoder_shapes(llm: dict, pre: str) -> dict[str, tuple[int, ...]]:
    h, inner = llm["hidden_size"], llm["intermediate_size"]
    heads, kv = llm["num_attention_heads"], llm.get("num_key_value_heads") or \
        llm["num_attention_heads"]
    hd = llm.get("head_dim") or h // heads
    shapes = {pre + "self_attn.o_proj.weight": (h, heads * hd),
              pre + "mlp.down_proj.weight": (h, inner),
              pre + "input_layernorm.weight": (h,), pre + "post_attention_layernorm.weight": (h,)}
    if llm["architectures"][0] == "Phi3ForCausalLM":
        shapes[pre + "self_attn.qkv_proj.weight"] = ((heads + 2 * kv) * hd, h)
        shapes[pre + "mlp.gate_up_proj.weight"] = (2 * inner, h)
        return shapes
    for name, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
        shapes[pre + f"self_attn.{name}_proj.weight"] = (rows, h)
        shapes[pre + f"self_attn.{name}_proj.bias"] = (rows,)
    shapes.update({pre + "mlp.gate_proj.weight": (inner, h), pre + "mlp.up_proj.weight": (inner, h)})
    return shapes


def native_tensors(name: str, tensor) -> dict:
    """The native tensors source tensor `name` becomes (a fused qkv becomes three)."""
    fused = FUSED_QKV.match(name)
    if fused:
        layer, kind = fused.groups()
        q, k, v = tensor.chunk(3, dim=0)
        pre = f"model.vision_tower.encoder.layer.{layer}.attention."
        return {f"{pre}q_proj.{kind}": q, f"{pre}k_proj.{kind}": k, f"{pre}v_proj.{kind}": v}
    for pattern, target in VISION_RENAMES:
        if re.match(pattern, name):
            return {re.sub(pattern, target, name): tensor}
    return {}


def weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise ConversionError(f"{index}: lists {', '.join(missing)}, missing from {src}")
        return [src / n for n in names]
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    raise ConversionError(f"{src}: no model.safetensors or model.safetensors.index.json")


def read_weights(src: Path, cfg: dict) -> dict:
    """The native state dict, every tensor checked against the source config's shapes."""
    from safetensors import safe_open

    expected = source_shapes(cfg)
    llm = cfg["llm_config"]
    # A tied model's head may still be saved; it is the embedding, so it is dropped.
    optional = {"language_model.lm_head.weight": (llm["vocab_size"], llm["hidden_size"])} \
        if llm.get("tie_word_embeddings", False) else {}
    state, seen = {}, set()
    for path in weight_files(src):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                if name in optional and shape == optional[name]:
                    continue
                if name not in expected:
                    raise ConversionError(f"{path}: tensor {name} {list(shape)} is not part of an "
                                          "InternVL2 checkpoint with this config.json")
                if shape != expected[name]:
                    raise ConversionError(f"{path}: tensor {name} has shape {list(shape)}, "
                                          f"config.json implies {list(expected[name])}")
                state.update(native_tensors(name, f.get_tensor(name)))
                seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConversionError(f"{src}: tensors missing from the weight files: "
                              f"{', '.join(missing[:5])}{more}")
    return state


def native_tokenizer(src: Path, template: str):
    """The source tokenizer with InternVL's named image tokens, `<video>` and a template."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:  # tokenizer.json needs no config.json lookup (which warns about internvl_chat)
        source = PreTrainedTokenizerFast.from_pretrained(str(src)) \
            if (src / "tokenizer.json").is_file() else AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{src}: cannot load the tokenizer: {exc}") from exc
    for token in ("<img>", "</img>", "<IMG_CONTEXT>"):
        if token not in source.get_vocab():
            raise ConversionError(f"{src}: the tokenizer has no {token} token")
    backend = source.backend_tokenizer
    backend.add_special_tokens([AddedToken("<video>", special=True, normalized=False)])
    roles = {r: getattr(source, r) for r in ("bos_token", "eos_token", "unk_token", "pad_token")
             if getattr(source, r, None)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles,
                                   additional_special_tokens=list(INTERNVL_NAMED.values()),
                                   chat_template=TEMPLATES[template],
                                   model_max_length=source.model_max_length, **INTERNVL_NAMED)


def convert(src: str | Path, dst: str | Path) -> Path:
    """Write the native form of InternVL2 checkpoint `src` to `dst` (atomically)."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from emoverse.atomic_dir import atomic_dir

    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"output directory {dst} is not empty")
    cfg = read_source_config(src)
    template = TEMPLATE_OF.get(cfg.get("template"), "phi3" if
                               cfg["llm_config"]["architectures"][0] == "Phi3ForCausalLM"
                               else "chatml-internvl")
    tokenizer = native_tokenizer(src, template)
    config = native_config(cfg, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    state = read_weights(src, cfg)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    if config.tie_word_embeddings:  # one tensor for both, as the source holds it
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    ends = ["<|end|>", "<|endoftext|>"] if template == "phi3" else ["<|im_end|>", "<|endoftext|>"]
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in ends
                      if t in tokenizer.get_vocab()],
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    with atomic_dir(dst) as tmp:
        model.save_pretrained(str(tmp))
        internvl_processor(tokenizer, cfg["force_image_size"], IMAGENET_MEAN, IMAGENET_STD,
                           cfg["vision_config"]["patch_size"],
                           cfg["downsample_ratio"]).save_pretrained(str(tmp))
    return dst


def write_source(cfg: dict, tokenizer, out: Path, dtype: str = "float32", std: float = 0.02) -> Path:
    """A random-init checkpoint in InternVL2's own format (what the hub serves): config,
    safetensors with the source tensor names and shapes, tokenizer."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, shape in source_shapes(cfg).items():
        if name.endswith((".ls1", ".ls2")):
            t = torch.full(shape, 0.1)  # InternViT's layer-scale initialisation
        elif re.search(r"(norm\d?|layernorm|mlp1\.0)\.weight$", name):
            t = torch.ones(shape)
        elif name.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            t = torch.randn(shape) * std
        tensors[name] = t.to(getattr(torch, dtype)).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tokenizer.save_pretrained(str(out))
    return out
