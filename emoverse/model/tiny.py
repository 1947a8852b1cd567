"""The embedded default model: a tiny, randomly initialised Qwen2-VL written to disk.

`emoverse model init-tiny --out DIR`

The directory it writes is an ordinary Hugging Face checkpoint (config, safetensors
weights, tokenizer, processor, chat template), so everything downstream loads it with
`AutoProcessor` / `AutoModelForImageTextToText` exactly as it would a downloaded model.
There is no model hub here, so the tokenizer is a byte-level BPE trained in-process on
the EMT instruction vocabulary: with ~1000 tokens every label word is one token, which
keeps `max_new_tokens` honest for the short answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Qwen2-VL's special tokens; the processor and model config refer to them by name.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template, reduced to what EMT needs (system, user text/image/video
# parts, assistant text) and with the same token layout as the original.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model; defaults are the ones measured to learn the demo set."""

    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_width: int = 128
    vision_heads: int = 4
    image_size: int = 56  # frames are resized to this square (multiple of 28)
    seed: int = 0


def train_tokenizer(corpus: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_processor(tokenizer, image_size: int):
    """The real Qwen2-VL processor around `tokenizer`, sized for `image_size` frames."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = image_size * image_size
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, spec: TinySpec):
    from transformers import Qwen2VLConfig

    head_dim = spec.hidden_size // spec.num_heads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    half = head_dim // 2  # mrope sections must sum to head_dim / 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
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
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def write_tiny_model(out: str | Path, corpus: list[str], spec: TinySpec = TinySpec()) -> Path:
    """Write a complete Hugging Face model directory to `out` and return its path."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    processor = build_processor(tokenizer, spec.image_size)
    config = build_config(tokenizer, spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
