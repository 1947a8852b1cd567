"""The embedded default model: a tiny, randomly initialised vision-language model on disk.

`emoverse model init-tiny --out DIR [--arch qwen2-vl|internvl|qwen2.5-omni]`

The directory it writes is an ordinary Hugging Face checkpoint (config, safetensors
weights, tokenizer, processor, chat template), so everything downstream loads it with
`AutoProcessor` / `AutoModelForImageTextToText` exactly as it would a downloaded model.
The default is Qwen2-VL; `emoverse.model.architectures` lists the others (InternVL,
Qwen2.5-Omni's thinker, which also hears the clip's audio).
There is no model hub here, so the tokenizer is a byte-level BPE trained in-process on
the EMT instruction vocabulary: with ~1000 tokens every label word is one token, which
keeps `max_new_tokens` honest for the short answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emoverse.console import no_progress_bars
from emoverse.model.architectures import (ARCH_NAMES, ARCHITECTURES, DEFAULT_ARCH,
                                          Architecture, get_architecture)

__all__ = ["ARCH_NAMES", "ARCHITECTURES", "DEFAULT_ARCH", "TinySpec", "train_tokenizer",
           "write_tiny_model"]


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
    audio_depth: int = 2  # audio encoder (architectures that hear)
    audio_width: int = 64
    audio_heads: int = 4
    seed: int = 0


def train_tokenizer(corpus: list[str], vocab_size: int, arch: str | Architecture = DEFAULT_ARCH):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it as a fast HF tokenizer
    carrying `arch`'s special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    arch = get_architecture(arch) if isinstance(arch, str) else arch
    special = list(arch.special_tokens)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=special[0],
        additional_special_tokens=special[1:],
        chat_template=arch.chat_template,
        model_max_length=4096,
        **arch.tokenizer_tokens,
    )


def write_tiny_model(out: str | Path, corpus: list[str], arch: str = DEFAULT_ARCH,
                     spec: TinySpec = TinySpec()) -> Path:
    """Write a complete Hugging Face model directory of architecture `arch` (one of
    `ARCH_NAMES`) to `out` and return its path."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    architecture = get_architecture(arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, spec.vocab_size, architecture)
    processor = architecture.build_processor(tokenizer, spec)
    config = architecture.build_config(tokenizer, spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    with no_progress_bars():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out
