"""The five EMT tasks, one module each, registered by their short names.

A new task is one module defining `TASK` plus one line in `_MODULES`.
"""

from __future__ import annotations

from importlib import import_module

from .base import EMOTIONS, SYSTEM_PROMPT, Answer, Task

_MODULES = {
    "msa": "emoverse.tasks.msa",
    "mer": "emoverse.tasks.mer",
    "fer": "emoverse.tasks.fer",
    "eri": "emoverse.tasks.eri",
    "ecpe": "emoverse.tasks.ecpe",
}
TASK_NAMES = tuple(_MODULES)


def get_task(name: str) -> Task:
    """The task registered as `name` (case-insensitive)."""
    key = name.lower()
    if key not in _MODULES:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return import_module(_MODULES[key]).TASK


__all__ = ["Answer", "EMOTIONS", "SYSTEM_PROMPT", "TASK_NAMES", "Task", "get_task"]
