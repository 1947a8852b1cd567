"""An independent forward pass of an InternVL2 chat checkpoint, from its own tensors.

Plain torch over the source names (InternViT with fused qkv and layer scale, pixel
shuffle v2, the `mlp1` projector, Phi-3 with fused qkv / gate-up and "su" rotary
scaling), written from the original model's definition, so the converted model's
logits can be compared with numbers that owe nothing to the converter or to
transformers' InternVL classes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def _vision(w: dict, v: dict, pixels: torch.Tensor) -> torch.Tensor:
    d, heads, p = v["hidden_size"], v["num_attention_heads"], v["patch_size"]
    pre = "vision_model.embeddings."
    x = F.conv2d(pixels, w[pre + "patch_embedding.weight"], w[pre + "patch_embedding.bias"],
                 stride=p).flatten(2).transpose(1, 2)
    cls = w[pre + "class_embedding"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + w[pre + "position_embedding"]
    b, n, _ = x.shape
    hd = d // heads
    for i in range(v["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}."

        def norm(t, k):
            return F.layer_norm(t, (d,), w[pre + k + ".weight"], w[pre + k + ".bias"],
                                v["layer_norm_eps"])

        qkv = F.linear(norm(x, "norm1"), w[pre + "attn.qkv.weight"], w[pre + "attn.qkv.bias"])
        q, k, val = qkv.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1) @ val
        att = F.linear(att.transpose(1, 2).reshape(b, n, d), w[pre + "attn.proj.weight"],
                       w[pre + "attn.proj.bias"])
        x = x + att * w[pre + "ls1"]
        h = F.linear(norm(x, "norm2"), w[pre + "mlp.fc1.weight"], w[pre + "mlp.fc1.bias"])
        x = x + F.linear(F.gelu(h), w[pre + "mlp.fc2.weight"], w[pre + "mlp.fc2.bias"]) * w[pre + "ls2"]
    return x


def _pixel_shuffle_v2(x: torch.Tensor, scale: float) -> torch.Tensor:
    n, width, height, c = x.shape
    x = x.view(n, width, int(height * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(height * scale), int(width * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


def image_features(w: dict, cfg: dict, pixels: torch.Tensor) -> torch.Tensor:
    x = _vision(w, cfg["vision_config"], pixels)[:, 1:, :]
    side = int(x.shape[1] ** 0.5)
    x = _pixel_shuffle_v2(x.reshape(x.shape[0], side, side, -1), cfg["downsample_ratio"])
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = F.layer_norm(x, (x.shape[-1],), w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
    x = F.gelu(F.linear(x, w["mlp1.1.weight"], w["mlp1.1.bias"]))
    return F.linear(x, w["mlp1.3.weight"], w["mlp1.3.bias"])


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _su_rotary(llm: dict, length: int):
    """Phi-3's "su" scaled rotary embedding: the short factors below the trained length,
    cos/sin scaled by sqrt(1 + log(s) / log(trained)) for the extension s."""
    hd = llm["hidden_size"] // llm["num_attention_heads"]
    trained, longest = llm["original_max_position_embeddings"], llm["max_position_embeddings"]
    factors = torch.tensor(llm["rope_scaling"]["long_factor" if length > trained
                                              else "short_factor"], dtype=torch.float32)
    inv = 1.0 / (factors * llm["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(length).float(), inv)
    emb = torch.cat([angles, angles], dim=-1)
    s = longest / trained
    scale = math.sqrt(1 + math.log(s) / math.log(trained)) if s > 1 else 1.0
    return emb.cos() * scale, emb.sin() * scale


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def phi3_logits(w: dict, llm: dict, embeds: torch.Tensor) -> torch.Tensor:
    b, n, h = embeds.shape
    heads, eps = llm["num_attention_heads"], llm["rms_norm_eps"]
    hd = h // heads
    cos, sin = _su_rotary(llm, n)
    causal = torch.full((n, n), float("-inf")).triu(1)
    x = embeds
    for i in range(llm["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}."
        qkv = F.linear(_rms(x, w[pre + "input_layernorm.weight"], eps),
                       w[pre + "self_attn.qkv_proj.weight"])
        q, k, v = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in qkv.split(h, dim=-1))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + causal, dim=-1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(b, n, h), w[pre + "self_attn.o_proj.weight"])
        gate, up = F.linear(_rms(x, w[pre + "post_attention_layernorm.weight"], eps),
                            w[pre + "mlp.gate_up_proj.weight"]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w[pre + "mlp.down_proj.weight"])
    x = _rms(x, w["language_model.model.norm.weight"], eps)
    return F.linear(x, w["language_model.lm_head.weight"])


def reference_logits(src: Path, input_ids: torch.Tensor, pixels: torch.Tensor,
                     image_token_id: int) -> torch.Tensor:
    """InternVLChatModel's forward: image features in place of the IMG_CONTEXT tokens."""
    cfg = json.loads((Path(src) / "config.json").read_text())
    w = {k: t.float() for k, t in load_file(str(Path(src) / "model.safetensors")).items()}
    embeds = F.embedding(input_ids, w["language_model.model.embed_tokens.weight"])
    features = image_features(w, cfg, pixels.float())
    selected = input_ids == image_token_id
    embeds[selected] = features.reshape(-1, features.shape[-1])
    return phi3_logits(w, cfg["llm_config"], embeds)
