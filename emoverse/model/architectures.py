"""The real transformers architectures the tiny model can be written as.

Each entry names the special tokens its tokenizer is trained with, the chat template
(same message structure for all: system text, user [video, text], assistant text, in
ChatML turns ending with `<|im_end|>`), and how to build the real processor and the
model config from the trained tokenizer, so token ids agree everywhere.

- `qwen2-vl` (default): `Qwen2VLForConditionalGeneration` + `Qwen2VLProcessor`.
- `internvl`: `InternVLForConditionalGeneration` + `InternVLProcessor` (InternViT-style
  vision tower, pixel-shuffle MLP projector, Qwen2 text model), the family of the
  paper's InternVL2-4B base. Each frame is one 56x56 image of 4x4 patches of 14 pixels,
  pixel-shuffled to 4 tokens, so a 4-frame clip costs 16 visual tokens.
- `qwen2.5-omni`: `Qwen2_5OmniThinkerForConditionalGeneration` + `Qwen2_5OmniProcessor`:
  Qwen2.5-Omni's thinker, which also hears. Its Whisper-style audio encoder takes 128 mel
  bins at 16 kHz (100 frames a second) and gives 25 audio tokens a second.

Nothing here imports transformers at module level (the CLI reads `ARCH_NAMES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from emoverse.model.chat_templates import TEMPLATES

DEFAULT_ARCH = "qwen2-vl"

# ImageNet statistics, as InternVL's own processors use.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class Architecture:
    name: str
    title: str
    model_class: str  # what AutoModelForImageTextToText loads the directory as
    processor_class: str  # what AutoProcessor loads it as
    # Trained into the tokenizer in this order; the first is padding, "<|im_end|>" ends turns.
    special_tokens: tuple[str, ...]
    chat_template: str
    build_processor: Callable  # (tokenizer, spec) -> processor
    build_config: Callable  # (tokenizer, spec) -> model config
    # Named tokenizer attributes the processor reads (saved in tokenizer_config.json).
    tokenizer_tokens: dict[str, str] = field(default_factory=dict)
    hears: bool = False  # takes an audio track beside the frames



def _ids(tokenizer, tokens) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def _text_config(tokenizer, spec, **extra) -> dict:
    """A small Qwen2-style language model whose token ids are the tokenizer's."""
    ids = _ids(tokenizer, ["<|endoftext|>", "<|im_end|>"])
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096,
        **extra,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


# --- Qwen2-VL ---------------------------------------------------------------------------

QWEN2_VL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen2_vl_processor(tokenizer, spec):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = spec.image_size * spec.image_size
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def _mrope(spec) -> dict:
    """Multimodal rotary positions (time, height, width) for the tiny Qwen text model."""
    half = spec.hidden_size // spec.num_heads // 2  # mrope sections must sum to head_dim / 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}


def _qwen2_vl_config(tokenizer, spec):
    from transformers import Qwen2VLConfig

    ids = _ids(tokenizer, QWEN2_VL_TOKENS)
    rope = _mrope(spec)
    vision = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_width,
        hidden_size=spec.hidden_size,
        num_heads=spec.vision_heads,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2VLConfig(
        text_config=_text_config(tokenizer, spec, rope_parameters=rope),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


# --- InternVL ---------------------------------------------------------------------------

INTERNVL_PATCH = 14
INTERNVL_DOWNSAMPLE = 0.5  # pixel shuffle: 2x2 patches -> one token
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>",
                  "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *INTERNVL_NAMED.values())


def _internvl_tokens_per_frame(spec) -> int:
    if spec.image_size % (2 * INTERNVL_PATCH):
        raise ValueError(f"internvl needs image_size a multiple of {2 * INTERNVL_PATCH}")
    return int((spec.image_size // INTERNVL_PATCH) ** 2 * INTERNVL_DOWNSAMPLE ** 2)


def _internvl_processor(tokenizer, spec):
    from emoverse.model.families import internvl_processor

    _internvl_tokens_per_frame(spec)  # a size the pixel shuffle cannot take fails here
    return internvl_processor(tokenizer, spec.image_size, IMAGENET_MEAN, IMAGENET_STD,
                              INTERNVL_PATCH, INTERNVL_DOWNSAMPLE)


def _internvl_config(tokenizer, spec):
    from transformers import InternVLConfig

    text = _text_config(tokenizer, spec, model_type="qwen2",
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    vision = dict(
        hidden_size=spec.vision_width,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        intermediate_size=2 * spec.vision_width,
        image_size=spec.image_size,
        patch_size=INTERNVL_PATCH,
    )
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_NAMED["context_image_token"]),
        image_seq_length=_internvl_tokens_per_frame(spec),
        downsample_ratio=INTERNVL_DOWNSAMPLE,
        tie_word_embeddings=True,
    )


# --- Qwen2.5-Omni (thinker) --------------------------------------------------------------

OMNI_NAMED = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
              "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
              "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
OMNI_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *OMNI_NAMED.values())
AUDIO_RATE = 16000  # Hz: what Whisper-style feature extractors take
MEL_BINS = 128  # Qwen2.5-Omni's audio encoder


def _omni_processor(tokenizer, spec):
    from transformers import (Qwen2_5OmniProcessor, Qwen2VLImageProcessor,
                              Qwen2VLVideoProcessor, WhisperFeatureExtractor)

    pixels = spec.image_size * spec.image_size
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False),
        feature_extractor=WhisperFeatureExtractor(feature_size=MEL_BINS,
                                                  sampling_rate=AUDIO_RATE),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def _omni_config(tokenizer, spec):
    from transformers import Qwen2_5OmniThinkerConfig

    ids = _ids(tokenizer, OMNI_TOKENS)
    rope = _mrope(spec)
    vision = dict(
        depth=spec.vision_depth, hidden_size=spec.vision_width, num_heads=spec.vision_heads,
        intermediate_size=2 * spec.vision_width, out_hidden_size=spec.hidden_size,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
        window_size=112, fullatt_block_indexes=[spec.vision_depth - 1],
    )
    audio = dict(
        num_mel_bins=MEL_BINS, encoder_layers=spec.audio_depth,
        encoder_attention_heads=spec.audio_heads, encoder_ffn_dim=2 * spec.audio_width,
        d_model=spec.audio_width, output_dim=spec.hidden_size, n_window=100,
        max_source_positions=1500,
    )
    return Qwen2_5OmniThinkerConfig(
        text_config=_text_config(tokenizer, spec, rope_parameters=rope),
        vision_config=vision,
        audio_config=audio,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=tokenizer.convert_tokens_to_ids("user"),
        tie_word_embeddings=True,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "qwen2-vl": Architecture(
        name="qwen2-vl",
        title="Qwen2-VL",
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        special_tokens=QWEN2_VL_TOKENS,
        chat_template=TEMPLATES["chatml-qwen-vl"],
        build_processor=_qwen2_vl_processor,
        build_config=_qwen2_vl_config,
    ),
    "internvl": Architecture(
        name="internvl",
        title="InternVL",
        model_class="InternVLForConditionalGeneration",
        processor_class="InternVLProcessor",
        special_tokens=INTERNVL_TOKENS,
        # As InternVL's own template: the processor expands "<video>" to one
        # "FrameN: <img><IMG_CONTEXT>...</img>" line per frame.
        chat_template=TEMPLATES["chatml-internvl"],
        build_processor=_internvl_processor,
        build_config=_internvl_config,
        tokenizer_tokens=INTERNVL_NAMED,
    ),
    "qwen2.5-omni": Architecture(
        name="qwen2.5-omni",
        title="Qwen2.5-Omni (thinker)",
        model_class="Qwen2_5OmniThinkerForConditionalGeneration",
        processor_class="Qwen2_5OmniProcessor",
        special_tokens=OMNI_TOKENS,
        chat_template=TEMPLATES["chatml-qwen-omni"],
        build_processor=_omni_processor,
        build_config=_omni_config,
        tokenizer_tokens=OMNI_NAMED,
        hears=True,
    ),
}
ARCH_NAMES = tuple(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown tiny architecture {name!r}; choose one of "
                         f"{', '.join(ARCH_NAMES)}") from None
