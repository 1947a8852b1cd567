"""Turn EMT rows (prompt, target, frames) into model inputs with the model's own processor.

Messages go through the processor's chat template, so any image-text-to-text model with
a video-capable processor works (the tiny Qwen2-VL and InternVL are tested). For training
the prompt is masked (-100) so the loss falls on the answer and its end-of-turn token
only. The padding side is passed to every processor call (right for training, left for
generation), since some processors (InternVL) default to their own.
"""

from __future__ import annotations

import threading
from typing import Mapping, Sequence

import numpy as np

from emoverse.tasks import SYSTEM_PROMPT

IGNORE = -100


AUDIO_COLUMNS = ("audio", "audio_samples")  # int16 samples (padded) and how many are real


def messages(prompt: str, target: str | None = None, hears: bool = False) -> list[dict]:
    clip = [{"type": "video"}, *([{"type": "audio"}] if hears else [])]
    turns = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [*clip, {"type": "text", "text": prompt}]},
    ]
    if target is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return turns


def waveforms(batch: Mapping[str, Sequence]) -> list[np.ndarray]:
    """The rows' audio as float waveforms, each cut to its real length."""
    from emoverse.media.audio import as_float

    return [as_float(np.asarray(a)[:int(n)])
            for a, n in zip(batch["audio"], batch["audio_samples"])]


def takes_audio(processor) -> bool:
    """Whether `processor` has a feature extractor for audio (Qwen2.5-Omni's does)."""
    return getattr(processor, "feature_extractor", None) is not None


def generation_collators(processor) -> dict[bool, "Collator"]:
    """Generation collators of `processor` by whether the model hears: frames only, and
    with the audio where the processor takes it."""
    return {False: Collator(processor, train=False),
            **({True: Collator(processor, train=False, hears=True)}
               if takes_audio(processor) else {})}


class Collator:
    """Callable turning a batch of rows (dict of arrays) into tensors for the model.
    `hears`: the rows' audio (`AUDIO_COLUMNS`) goes to the model beside their frames."""

    def __init__(self, processor, max_length: int = 2048, train: bool = True,
                 hears: bool = False):
        if hears and not takes_audio(processor):
            raise ValueError(f"this model's processor ({type(processor).__name__}) takes no "
                             "audio; a stage with audio: true needs a base that hears, such "
                             "as Qwen2.5-Omni's thinker (base_model: tiny:qwen2.5-omni)")
        self.processor = processor
        self.hears = hears
        # Ray Data may collate on several prefetch threads; a fast tokenizer's padding
        # settings are shared state, so calls must not interleave.
        self._lock = threading.Lock()
        self.max_length = max_length
        self.train = train

    def _chat(self, convo: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(convo, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def __call__(self, batch: Mapping[str, Sequence]) -> dict:
        with self._lock:
            return self._collate(batch)

    def _collate(self, batch: Mapping[str, Sequence]) -> dict:
        import torch

        hears = self.hears
        prompts = [self._chat(messages(str(p), hears=hears), True) for p in batch["prompt"]]
        # writable: frames straight from Arrow are read-only views, which torch warns about
        media = {"videos": [np.require(f, requirements="W") for f in batch["frames"]]}
        if hears:
            media["audio"] = waveforms(batch)
            # Padded to the longest waveform, not to Whisper's 30 s (the encoder reads only
            # the real frames either way; extracting 30 s of padding a row cost 60 ms).
            hop = self.processor.feature_extractor.hop_length
            longest = max(len(w) for w in media["audio"])
            media["audio_kwargs"] = {"max_length": -(-longest // hop) * hop}
        tokenizer = self.processor.tokenizer
        if not self.train:
            return dict(self.processor(text=prompts, **media, padding=True,
                                       padding_side="left", return_tensors="pt"))
        full = [self._chat(messages(str(p), str(t), hears), False)
                for p, t in zip(batch["prompt"], batch["target"])]
        answer_lens = []
        for f, p in zip(full, prompts):
            if not f.startswith(p):
                raise ValueError("chat template does not render the prompt as a prefix of the "
                                 "conversation; cannot mask the prompt")
            answer_lens.append(len(tokenizer(f[len(p):], add_special_tokens=False).input_ids))
        enc = dict(self.processor(text=full, **media, padding=True, padding_side="right",
                                  return_tensors="pt"))
        mask = enc["attention_mask"]
        lengths = mask.sum(dim=1)
        if int(lengths.max()) > self.max_length:
            raise ValueError(f"a sample has {int(lengths.max())} tokens, over max_length "
                             f"{self.max_length}; raise max_length or use fewer frames")
        # Keep each row's last `answer_len` real tokens (whichever side the padding is on).
        labels = enc["input_ids"].clone()
        rank = mask.cumsum(dim=1)  # 1-based position among the row's real tokens
        prompt_end = (lengths - torch.tensor(answer_lens))[:, None]
        labels[(rank <= prompt_end) | (mask == 0)] = IGNORE
        enc["labels"] = labels
        return enc


def video_size_as_saved(processor):
    """`processor` with its video processor's saved frame size in force: some processors
    (Qwen2.5-Omni's) carry a class default size that would otherwise resize every frame to
    their pretraining resolution, whatever the checkpoint was trained at."""
    video = getattr(processor, "video_processor", None)
    if video is not None and "size" in getattr(type(processor), "videos_kwargs", {}):
        processor.videos_kwargs = {**type(processor).videos_kwargs, "size": dict(video.size)}
    return processor


def fit_processor(processor, size: int):
    """Make `processor` take `size`-pixel square frames as they are, so the visual tokens
    per frame are the ones the recipe's `media.size` implies; a size the model cannot take
    is a ValueError naming the setting."""
    video = getattr(processor, "video_processor", None)
    if video is None:
        return processor
    video.do_sample_frames = False  # the media stage already chose the frames
    kind = type(processor).__name__
    if kind == "InternVLProcessor":
        # Tokens per frame are fixed by the model's tile (256 for 448 px, patch 14, shuffle 0.5).
        tile = int(round(processor.image_seq_length ** 0.5)) * 2 * 14
        if size != tile:
            raise ValueError(f"media.size={size}, but this InternVL model takes {tile}-px frames "
                             f"({processor.image_seq_length} tokens each); set media.size={tile}")
        video.size = {"height": size, "width": size}
    elif kind in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor", "Qwen2_5OmniProcessor"):
        if size % 28:
            raise ValueError(f"media.size={size}: Qwen2-VL frames must be a multiple of 28 px "
                             f"(patch 14, merge 2); set media.size={max(28, size // 28 * 28)}")
        video.size = {"shortest_edge": size * size, "longest_edge": size * size}
    return video_size_as_saved(processor)
