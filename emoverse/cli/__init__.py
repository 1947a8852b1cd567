"""`emoverse --help`: the command line of the M2SE implementation on Ray."""

from __future__ import annotations

import argparse
import sys

from emoverse.cli import bench, data, evaluation, models, operations, serving, sweep, training
from emoverse.console import drop_known_notices

DESCRIPTION = """\
emoverse: M2SE multistage multitask instruction tuning for unified sentiment and
emotion analysis (MSA, MER, FER, ERI, ECPE), on Ray.

Start with `emoverse quickstart`: it runs everything on this machine with a tiny
model and a generated demo set, and prints what the model learned."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoverse", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in (training, models, evaluation, sweep, data, serving, bench, operations):
        area.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `submit JOB [options] -- WORDS`: the words after `--` belong to the job's entrypoint.
    if extra[:1] == ["--"] and hasattr(args, "entrypoint_args"):
        args.entrypoint_args, extra = [*args.entrypoint_args, *extra[1:]], []
    # KEY=VALUE overrides may also follow options (`train R --run-dir D a.b=1`), which
    # argparse leaves unparsed for a positional list that came earlier.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-")
                                                    for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    drop_known_notices()
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"emoverse: error: {exc}", file=sys.stderr)
        return 2

