"""The text the tiny model's tokenizer is trained on: everything EMT prompts can contain."""

from __future__ import annotations

from emoverse.emt.demo import lexicon
from emoverse.tasks import EMOTIONS, SYSTEM_PROMPT, TASK_NAMES, get_task
from emoverse.tasks.fer import AU_PHRASES, NEUTRAL_PHRASE


def instruction_corpus() -> list[str]:
    """Prompts, answers and label words, label words repeated so each becomes one token."""
    tasks = [get_task(n) for n in TASK_NAMES]
    lines = [SYSTEM_PROMPT, "The person says:", "The conversation:", "The target utterance is"]
    lines += [f"{t.tag} {t.instruction}" for t in tasks]
    labels = [e.capitalize() for e in EMOTIONS] + list(EMOTIONS) + ["Positive", "Negative"]
    labels += [*AU_PHRASES.values(), NEUTRAL_PHRASE]
    lines += [f"{w}." for w in labels for _ in range(50)]
    lines += [f"{i}_{e},{j}" for i in range(1, 13) for e in EMOTIONS for j in range(1, 13)]
    lines += lexicon() * 20
    lines += ["system", "user", "assistant", "because", "while saying", "the person is"] * 20
    return lines
