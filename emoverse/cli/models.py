"""`emoverse model init-tiny`, `model init --like NAME` and `model convert SRC`."""

from __future__ import annotations

from emoverse.cli.arguments import positive_int
from emoverse.model.architectures import ARCH_NAMES, DEFAULT_ARCH

LOAD_HINT = "load it with AutoProcessor/AutoModelForImageTextToText.from_pretrained"


def _init_tiny(args) -> int:
    from emoverse.model.tiny import write_tiny_model
    from emoverse.model.vocabulary import instruction_corpus

    out = write_tiny_model(args.out, instruction_corpus(), arch=args.arch)
    print(f"wrote a tiny random-init {args.arch} model to {out}; {LOAD_HINT}")
    return 0


def _init_like(args) -> int:
    from emoverse.model.families import load_family, write_like
    from emoverse.model.vocabulary import instruction_corpus

    family = load_family(args.like)
    out = write_like(args.like, args.out, instruction_corpus(), layers=args.layers,
                     seed=args.seed, dtype=args.dtype)
    depth = f"{args.layers} layer(s) per stack" if args.layers else "real depth"
    print(f"wrote a random-init {family.title} at real width, {depth}, to {out}; {LOAD_HINT}")
    return 0


def _convert(args) -> int:
    from emoverse.model.internvl2 import convert

    out = convert(args.source, args.out)
    print(f"converted {args.source} to {out} (InternVLForConditionalGeneration); {LOAD_HINT}")
    return 0


def register(sub) -> None:
    from emoverse.model.families import family_names

    model = sub.add_parser(
        "model", help="write, shape and convert models",
        description="Model utilities. `init-tiny` writes the embedded default model; `init "
                    "--like NAME` a random-init model of a real family at real width; "
                    "`convert` turns an InternVL2 chat checkpoint (the paper's base) into the "
                    "native transformers format.").add_subparsers(
        dest="model_command", metavar="ACTION", required=True)
    tiny = model.add_parser(
        "init-tiny", help="write the tiny random-init model directory (the embedded default)",
        description="Write a Hugging Face model directory (config, weights, tokenizer trained "
                    "in-process, processor) that loads with AutoProcessor and "
                    "AutoModelForImageTextToText like a downloaded checkpoint.")
    tiny.add_argument("--out", required=True, help="directory to write")
    tiny.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCH_NAMES,
                      help=f"which real transformers architecture to write (default: "
                           f"{DEFAULT_ARCH}; internvl is the paper's model family)")
    tiny.set_defaults(func=_init_tiny)
    like = model.add_parser(
        "init", help="write a random-init model of a real family at real width",
        description="Write a random-init model of a real checkpoint's family: its config at "
                    "real width and vocabulary, its processor's real pixel settings and its "
                    "special tokens at their real ids, with each stack cut to --layers. "
                    "InternVL2 is written in its own format and converted, as a download "
                    "would be.")
    like.add_argument("--like", required=True, choices=family_names(), help="the family")
    like.add_argument("--layers", type=positive_int,
                      help="layers per stack, language and vision (default: real depth)")
    like.add_argument("--out", required=True, help="directory to write")
    like.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    like.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="weight dtype (default float32)")
    like.set_defaults(func=_init_like)
    conv = model.add_parser(
        "convert", help="InternVL2 chat checkpoint -> native InternVLForConditionalGeneration",
        description="Convert an InternVL2 chat checkpoint (remote code, model_type "
                    "internvl_chat; Phi-3 or Qwen2 language model, e.g. OpenGVLab/InternVL2-4B) "
                    "into a directory AutoModelForImageTextToText and AutoProcessor load: "
                    "weights renamed and split, untied head kept, 448 px ImageNet-normalised "
                    "processor, InternVL image tokens and the source's chat template. Nothing "
                    "of the remote code runs.")
    conv.add_argument("source", help="the downloaded checkpoint directory")
    conv.add_argument("--out", required=True, help="directory to write (must be empty)")
    conv.set_defaults(func=_convert)
