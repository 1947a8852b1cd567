"""Chat templates, as Jinja, for the message structure every EMT prompt has: a system
text, a user turn of [video, text] (or [video, audio, text] for a model that hears), and an
assistant text.

The assistant's answer must render as a suffix of the prompt rendered with the generation
prompt (the collator masks the prompt by that prefix), so each template closes a turn
after its content and opens the assistant's turn in `add_generation_prompt` only.
"""

from __future__ import annotations


def _parts(video: str, image: str, audio: str | None = None) -> str:
    """A message's content: a plain string, or typed parts with media placeholders (an
    audio part only where the model hears)."""
    heard = f"{{% elif part['type'] == 'audio' %}}{audio}" if audio is not None else ""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'video' %}}{video}"
        f"{{% elif part['type'] == 'image' %}}{image}{heard}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
    )


def chatml_template(video: str, image: str, audio: str | None = None) -> str:
    """ChatML turns (Qwen, InternVL3), ending with `<|im_end|>`."""
    return (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n" + _parts(video, image, audio) + "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def phi3_template(video: str, image: str) -> str:
    """Phi-3 turns as InternVL2-4B was tuned with (ms-swift's `internvl2_phi3`):
    `<|system|>\\n...<|end|><|user|>\\n...<|end|><|assistant|>\\n...<|end|>`."""
    return (
        "{% for message in messages %}"
        "<|{{ message['role'] }}|>\n" + _parts(video, image) + "<|end|>"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )


def smolvlm_template(video: str, image: str) -> str:
    """SmolVLM's `Role: ...<end_of_utterance>` turns after one `<|im_start|>`."""
    return (
        "<|im_start|>{% for message in messages %}"
        "{{ message['role'] | capitalize }}: " + _parts(video, image) + "<end_of_utterance>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )


TEMPLATES = {
    "chatml-qwen-vl": chatml_template("<|vision_start|><|video_pad|><|vision_end|>",
                                      "<|vision_start|><|image_pad|><|vision_end|>"),
    # Qwen2.5-Omni's thinker: its processor expands each placeholder to the clip's tokens.
    "chatml-qwen-omni": chatml_template("<|vision_bos|><|VIDEO|><|vision_eos|>",
                                        "<|vision_bos|><|IMAGE|><|vision_eos|>",
                                        "<|audio_bos|><|AUDIO|><|audio_eos|>"),
    # InternVL's processor expands "<video>" into one "FrameN: <img>...</img>" line per frame.
    "chatml-internvl": chatml_template("<video>\n", "<IMG_CONTEXT>\n"),
    "phi3": phi3_template("<video>\n", "<IMG_CONTEXT>\n"),
    "smolvlm": smolvlm_template("<video>", "<image>"),
}
