"""`emoverse quickstart`, `train`, `export` and `recipes`."""

from __future__ import annotations

import time
from pathlib import Path

from emoverse.cli.arguments import positive_int
from emoverse.console import logger

log = logger(__name__)
# the recipes the quickstart runs: the embedded default, and the same that also hears
QUICKSTART_RECIPES = ("m2se-tiny", "m2se-tiny-audio")


def _quickstart(args) -> int:
    from emoverse.drivers.quickstart import run_quickstart

    run_quickstart(args.out, args.size, args.seed, args.overrides, args.recipe)
    return 0


def _train(args) -> int:
    from emoverse.drivers.training import results_table, train_recipe
    from emoverse.recipe import load_recipe

    overrides = list(args.overrides)
    if args.manifest:
        overrides.append(f"data.manifest={args.manifest}")
    recipe = load_recipe(args.recipe, overrides)  # bad overrides fail before any work
    run_dir = args.run_dir or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = train_recipe(recipe, run_dir, stages=args.stage or None,
                           evaluate=not args.no_eval)
    if results.get("baseline"):
        print()
        print(results_table(results))
    log.info(f"run directory: {Path(run_dir).resolve()}")
    return 0


def _ablate(args) -> int:
    from emoverse.drivers.ablation import ablation_table, run_ablation
    from emoverse.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # bad overrides fail before any work
    out = args.out or f"runs/ablate-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = run_ablation(recipe, out, args.seeds)
    print()
    print(ablation_table(rows, args.seeds))
    log.info(f"runs and ablation.json under {Path(out).resolve()}")
    return 0


def _export(args) -> int:
    from emoverse.model.export import export_model
    from emoverse.rundir import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.source, args.stage)
    out = export_model(checkpoint, args.out)
    print(f"exported {checkpoint} to {out}: load it with "
          "AutoModelForImageTextToText/AutoProcessor.from_pretrained")
    return 0


def _recipes(args) -> int:
    from emoverse.recipe import load_recipe, shipped_recipes

    for name in shipped_recipes():
        recipe = load_recipe(name)
        stages = ", ".join(s.name for s in recipe.stages)
        print(f"{name}: base {recipe.base_model}; stages: {stages}")
    return 0


def register(sub) -> None:
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
    qs.add_argument("--recipe", default=QUICKSTART_RECIPES[0], choices=QUICKSTART_RECIPES,
                    help="m2se-tiny (default), or m2se-tiny-audio: a tiny Qwen2.5-Omni that "
                         "also hears the clips, and a demo set whose voice decides some "
                         "labels (scored apart in the table)")
    qs.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="recipe overrides, e.g. stages.0.epochs=2 media.detector=yunet "
                         "media.yunet_model=/path/yunet.onnx")
    qs.set_defaults(func=_quickstart)
    train = sub.add_parser(
        "train", help="train a recipe's M2SE stages on Ray Train",
        description="Run a recipe (a shipped name such as m2se-tiny or m2se-paper, or a YAML "
                    "file): the media stage on Ray Data, then each stage on Ray Train from the "
                    "previous stage's checkpoint, evaluating after each. Finished stages are "
                    "skipped and an interrupted stage resumes from its last checkpoint when "
                    "the same --run-dir is given again. An existing Ray cluster is used when "
                    "RAY_ADDRESS is set.")
    train.add_argument("recipe", help="shipped recipe name or recipe YAML file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="recipe overrides, e.g. stages.0.epochs=2 "
                            "stages.stage1-multitask-pretraining.lr=1e-3 scaling.num_workers=4")
    train.add_argument("--run-dir", help="run directory (default: runs/<recipe>-<time>); "
                                         "give an existing one to resume")
    train.add_argument("--manifest", help="EMT manifest to train on (data.manifest)")
    train.add_argument("--stage", action="append", metavar="NAME",
                       help="run only this stage (repeatable); earlier stages must have "
                            "finished in --run-dir")
    train.add_argument("--no-eval", action="store_true", help="skip the per-stage evaluation")
    train.set_defaults(func=_train)

    ablate = sub.add_parser(
        "ablate", help="does staging help? a recipe's stages against one stage on their union",
        description="Train the recipe as written and as one stage on the union of its "
                    "mixtures with the same total samples (the first stage's settings), "
                    "with each seed, on one base model, data set and media cache; evaluate "
                    "each run and print every task's metric after the last stage, mean and "
                    "spread over the seeds, side by side. Runs already finished under --out "
                    "are reused.")
    ablate.add_argument("recipe", help="shipped recipe name or recipe YAML file")
    ablate.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, applied to both arms")
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="run seeds (default: 0 1 2)")
    ablate.add_argument("--out", help="directory of the runs (default: "
                                      "runs/ablate-<recipe>-<time>); give it again to resume")
    ablate.set_defaults(func=_ablate)

    export = sub.add_parser(
        "export", help="merge a run's adapters into a standalone Hugging Face model",
        description="Merge a stage's LoRA adapter, and the stages below it, into standalone "
                    "weights and write a model directory (with its processor) that "
                    "from_pretrained loads without emoverse or peft.")
    export.add_argument("source", help="a run directory or a stage checkpoint directory")
    export.add_argument("--out", required=True, help="directory to write (must be empty)")
    export.add_argument("--stage", help="stage of the run to export (default: its last "
                                        "finished stage)")
    export.set_defaults(func=_export)

    recipes = sub.add_parser(
        "recipes", help="list the shipped training recipes",
        description="List the recipes shipped in the package. A recipe names the base model, "
                    "the media parameters and the ordered M2SE stages with their task "
                    "mixtures and hyperparameters; m2se-paper is the paper's, m2se-tiny the "
                    "embedded default.")
    recipes.set_defaults(func=_recipes)
