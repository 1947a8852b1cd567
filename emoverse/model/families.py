"""Real model families, offline: their configs as facts, and random-init models built from
them at real width.

`emoverse model init --like NAME [--layers N] --out DIR`

Each `families/NAME.json` holds what a downloaded checkpoint's config, processor and
tokenizer say that matters for shapes and token ids: the config fields, the processor's
pixels and normalisation, the special tokens at their real ids, the chat template, and
where each fact was read (facts not checked against the real file are marked in `notes`).
`write_like` turns a family into a model directory at real width and real processor
settings, with the depth reduced to `layers`, so the code path a real checkpoint takes
(and its memory per layer) is exercised without a model hub. The tokenizer is the only
part that is not the real one: a byte-level BPE trained on the EMT vocabulary, padded to
the real vocabulary size with the special tokens at their real ids.

A family in a remote-code format (InternVL2's `internvl_chat`) is written in that format
first and then converted, exactly as a downloaded one would be (`emoverse model convert`).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Literal

from emoverse.config_file import Strict, validated
from emoverse.model.architectures import INTERNVL_NAMED, OMNI_NAMED
from emoverse.model.chat_templates import TEMPLATES

FAMILY_DIR = Path(__file__).parent / "families"
BPE_SIZE = 1024  # learnt tokens; the rest of the real vocabulary is unused filler


class Family(Strict):
    name: str
    hub_id: str
    title: str
    format: Literal["native", "internvl_chat"]
    notes: list[str] = []
    sources: list[str]
    config: dict
    processor: dict
    tokens: dict[str, int]  # special tokens at their real ids
    pad_token: str
    eos_tokens: list[str]  # the first ends an assistant turn
    chat_template: Literal[tuple(TEMPLATES)]  # type: ignore[valid-type]

    @property
    def vocab_size(self) -> int:
        text = self.config.get("text_config") or self.config["llm_config"]
        return text["vocab_size"]


def family_names() -> list[str]:
    return sorted(p.stem for p in FAMILY_DIR.glob("*.json"))


def load_family(name: str) -> Family:
    path = FAMILY_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(family_names())}")
    return validated(Family, json.loads(path.read_text()), str(path))


def padded_tokenizer(family: Family, corpus: list[str]):
    """A fast tokenizer with `family`'s special tokens at their real ids, a BPE learnt on
    `corpus`, and unused filler up to the real vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    learner.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    learnt = json.loads(learner.to_str())["model"]
    # A processor-only token such as InternVL's "<video>" (replaced by frame lines before
    # tokenising) may lie past the model's vocabulary.
    special = dict(family.tokens)
    size = max(family.vocab_size, max(special.values()) + 1)
    taken = set(special.values())
    free = (i for i in range(size) if i not in taken)
    vocab = {t: next(free) for t, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1])}
    vocab.update({f"<|unused{i}|>": i for i in free})
    vocab.update(special)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in learnt["merges"]]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    # The names InternVL's processor reads; a remote-code source has none (convert adds them).
    named = INTERNVL_NAMED if "<IMG_CONTEXT>" in special and family.format == "native" else {}
    if "<|AUDIO|>" in special:  # the names Qwen2.5-Omni's processor reads
        named = OMNI_NAMED
    roles = {k: v for k, v in (("bos_token", "<s>"), ("unk_token", "<unk>")) if v in special}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=family.eos_tokens[0], pad_token=family.pad_token,
        additional_special_tokens=[t for t in special if t not in roles.values()],
        chat_template=TEMPLATES[family.chat_template], model_max_length=131072,
        **roles, **named)


def family_processor(family: Family, tokenizer):
    """The family's real processor classes and pixel settings around `tokenizer`."""
    p = family.processor
    norm = {"image_mean": p["image_mean"], "image_std": p["image_std"]}
    model_type = family.config["model_type"]
    if family.format == "internvl_chat":
        raise ValueError(f"family {family.name}: its checkpoints ship no processor; "
                         "`emoverse model convert` writes one")
    if model_type == "internvl":
        return internvl_processor(tokenizer, p["size"], p["image_mean"], p["image_std"])
    if model_type == "qwen2_5_vl":
        from transformers import (Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
                                  Qwen2VLVideoProcessor)

        pixels = {"shortest_edge": p["min_pixels"], "longest_edge": p["max_pixels"]}
        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=pixels, **norm),
            video_processor=Qwen2VLVideoProcessor(size=pixels, cap_pixels_per_frame=True,
                                                  **norm),
            tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    if model_type == "qwen2_5_omni_thinker":
        from transformers import (Qwen2_5OmniProcessor, Qwen2VLImageProcessor,
                                  Qwen2VLVideoProcessor, WhisperFeatureExtractor)

        pixels = {"shortest_edge": p["min_pixels"], "longest_edge": p["max_pixels"]}
        return Qwen2_5OmniProcessor(
            image_processor=Qwen2VLImageProcessor(size=pixels, **norm),
            video_processor=Qwen2VLVideoProcessor(size=pixels, cap_pixels_per_frame=True,
                                                  **norm),
            feature_extractor=WhisperFeatureExtractor(feature_size=p["mel_bins"],
                                                      sampling_rate=p["sampling_rate"]),
            tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    if model_type == "smolvlm":
        from transformers import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

        edge = {"longest_edge": p["size"]}
        return SmolVLMProcessor(
            image_processor=SmolVLMImageProcessor(size=edge, max_image_size=edge, **norm),
            video_processor=SmolVLMVideoProcessor(size=edge, max_image_size=edge, **norm),
            tokenizer=tokenizer, image_seq_len=p["image_seq_len"],
            chat_template=tokenizer.chat_template)
    raise ValueError(f"family {family.name}: no processor for model_type {model_type!r}")


def internvl_processor(tokenizer, size: int, mean: list[float], std: list[float],
                       patch: int = 14, downsample: float = 0.5):
    """InternVL's processor at `size`-pixel tiles. Its video processor defaults to 384 px
    with CLIP statistics, which InternViT's pixel shuffle cannot take: always pass both."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    square = {"height": size, "width": size}
    norm = {"image_mean": mean, "image_std": std}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=square, crop_to_patches=False, **norm),
        video_processor=InternVLVideoProcessor(size=square, **norm),
        tokenizer=tokenizer, image_seq_length=int((size // patch) ** 2 * downsample ** 2),
        chat_template=tokenizer.chat_template)


def reduced_config(family: Family, layers: int | None) -> dict:
    """The family's config with the language and vision stacks cut to `layers` (None:
    real depth); widths, vocabulary and every other field as the real one."""
    cfg = copy.deepcopy(family.config)
    if layers is None:
        return cfg
    text = cfg.get("text_config") or cfg["llm_config"]
    text["num_hidden_layers"] = min(layers, text["num_hidden_layers"])
    vision = cfg["vision_config"]
    key = "depth" if "depth" in vision else "num_hidden_layers"
    vision[key] = min(layers, vision[key])
    if "fullatt_block_indexes" in vision:  # Qwen2.5-VL: keep a full-attention block
        kept = [i for i in vision["fullatt_block_indexes"] if i < vision[key]]
        vision["fullatt_block_indexes"] = kept or [vision[key] - 1]
    if "audio_config" in cfg:  # Qwen2.5-Omni's audio encoder
        audio = cfg["audio_config"]
        audio["encoder_layers"] = min(layers, audio["encoder_layers"])
    return cfg


def generation_config(family: Family, tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in family.eos_tokens],
        pad_token_id=tokenizer.convert_tokens_to_ids(family.pad_token), do_sample=False)


def write_like(name: str, out: str | Path, corpus: list[str], layers: int | None = None,
               seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-init model directory of family `name` to `out` (atomically)."""
    import torch

    from emoverse.atomic_dir import atomic_dir

    family = load_family(name)
    if layers is not None and layers < 1:
        raise ValueError(f"--layers must be at least 1, got {layers}")
    tokenizer = padded_tokenizer(family, corpus)
    config = reduced_config(family, layers)
    torch.manual_seed(seed)
    out = Path(out)
    if family.format == "internvl_chat":
        from emoverse.model.internvl2 import convert, write_source

        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as t:
            src = write_source(config, tokenizer, Path(t) / "source", dtype=dtype)
            return convert(src, out)
    from transformers import AutoConfig, AutoModelForImageTextToText

    model_config = AutoConfig.for_model(config.pop("model_type"), **config)
    model = AutoModelForImageTextToText.from_config(model_config,
                                                    dtype=getattr(torch, dtype))
    model.generation_config = generation_config(family, tokenizer)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        family_processor(family, tokenizer).save_pretrained(tmp)
    return out
