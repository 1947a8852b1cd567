"""What emoverse tells the person running it: the `emoverse` logger's records, printed as
`[emoverse] message` on standard output.

Like Ray's and transformers' loggers, the package's logger has a handler of its own and
does not propagate to the root logger, so a line appears once whether the root logger is
configured (a Ray Train worker's is) or not. `logger(__name__)` is how modules get it.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

PACKAGE = "emoverse"


class _Stdout(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a record comes: test captures and a
    followed job's output replace it after the handler is made."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def logger(name: str) -> logging.Logger:
    """The logger of module `name`, under the package's console handler."""
    package = logging.getLogger(PACKAGE)
    if not package.handlers:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter(f"[{PACKAGE}] %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False
    return logging.getLogger(name)


# Single messages dropped from loggers that otherwise say things worth reading: DeepSpeed
# (imported by transformers when it saves a model) guesses the accelerator in every process
# and says it fell back to the CPU, also where Ray hid the GPUs from a CPU worker.
KNOWN_NOTICES = {"DeepSpeed": ("Setting accelerator to CPU",)}


class DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def drop_known_notices() -> None:
    """Filter `KNOWN_NOTICES` out of their loggers in this process (once)."""
    for name, prefixes in KNOWN_NOTICES.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in target.filters):
            target.addFilter(DropMessages(prefixes))


@contextmanager
def no_progress_bars():
    """transformers' and the Hub's progress bars off inside the block (as they were after):
    saving a model of one shard drew a bar for it, noise between our own progress lines."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
