"""`emoverse eval ...` and `emoverse eval compare A B`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from emoverse.cli.arguments import positive_int
from emoverse.tasks import TASK_NAMES


def _request(args):
    from emoverse.config_file import override_sections
    from emoverse.drivers.evaluation import EvalRequest
    from emoverse.recipe import EvalConfig, MediaConfig, load_recipe
    from emoverse.recipe_paths import absolute
    from emoverse.rundir import find_run, resolve_checkpoint

    if not args.model:
        raise ValueError("give --model DIR_OR_RUN")
    model = Path(args.model).resolve()  # the caller's paths: Ray's workers run elsewhere
    if not model.exists():
        raise FileNotFoundError(f"--model {args.model} does not exist")
    run = find_run(model)
    # A run's recipe gives the media and eval settings (and manifest and cache) it trained
    # with; overrides change them like a recipe's.
    recipe = load_recipe(run.recipe_file) if run else None
    config = override_sections({"media": recipe.media if run else MediaConfig(),
                                "eval": recipe.eval if run else EvalConfig()}, args.overrides)
    media, settings = config["media"], config["eval"]
    if media.yunet_model:
        media = media.model_copy(update={"yunet_model": absolute(media.yunet_model)})
    if run:
        model = resolve_checkpoint(model) if model == run.path else model
        manifest = Path(args.manifest).resolve() if args.manifest else run.manifest(recipe)
        out = args.out or run.evaluation(model.name, settings.split)
        cache = run.media_cache
    else:
        if not args.manifest:
            raise ValueError(f"{model} is not a run: give --manifest")
        manifest = Path(args.manifest).resolve()
        out = Path(args.out or f"evals/{model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        cache = Path(out).parent / "media-cache"
    return EvalRequest(model=model, manifest=manifest, out=Path(out).resolve(), media=media,
                       cache_root=Path(args.cache or cache).resolve(), config=settings,
                       tasks=tuple(args.tasks) if args.tasks else None,
                       num_actors=args.actors,
                       previous=_report_dir(args.previous) if args.previous else None)


def _report_dir(path: str) -> Path:
    """An evaluation report directory, or a run's latest evaluation."""
    from emoverse.evaluation.report import METRICS

    p = Path(path)
    if (p / METRICS).is_file() and "tasks" in json.loads((p / METRICS).read_text()):
        return p
    reports = sorted((p / "eval").glob(f"*/{METRICS}"), key=lambda f: f.stat().st_mtime)
    if not reports:
        raise FileNotFoundError(f"{p} holds no evaluation report ({METRICS})")
    return reports[-1].parent


def _eval(args) -> int:
    from emoverse.drivers.evaluation import evaluate
    from emoverse.evaluation.scoring import table

    req = _request(args)
    metrics = evaluate(req)
    print(table({req.model.name: metrics["tasks"], "majority baseline": metrics["baseline"]},
                {req.model.name: metrics["sources"],
                 "majority baseline": metrics["baseline_sources"]}))
    unparsed = {t: n for t, n in metrics["unparsed_counts"].items() if n}
    if unparsed:
        print(f"unparseable answers: {unparsed}")
    print(f"report: {req.out} (metrics.json, predictions.parquet, *.png)")
    return 0


def _compare(args) -> int:
    from emoverse.evaluation.report import METRICS, compare_table

    a, b = _report_dir(args.a), _report_dir(args.b)
    ma, mb = (json.loads((d / METRICS).read_text()) for d in (a, b))
    if ma["manifest_hash"] != mb["manifest_hash"] or ma["split"] != mb["split"]:
        print(f"note: different data (manifest {ma['manifest_hash']} {ma['split']} vs "
              f"{mb['manifest_hash']} {mb['split']})")
    print(f"A = {a}\nB = {b}")
    print(compare_table(ma, mb))
    return 0


def register(sub) -> None:
    ev = sub.add_parser(
        "eval", help="evaluate a model or run, or compare two evaluations",
        description="`emoverse eval run` evaluates a model or run: metrics, predictions and "
                    "figures. `emoverse eval compare A B` prints two reports side by side."
    ).add_subparsers(dest="eval_command", metavar="ACTION", required=True)
    run = ev.add_parser(
        "run", help="evaluate a model or run: metrics, predictions and figures",
        description="Evaluate a run (its last finished stage), a stage checkpoint or a Hugging "
                    "Face model directory on a manifest's split: the media stage (cached), "
                    "greedy generation on a Ray Data actor pool (every sample exactly once), "
                    "the benchmarks' metrics per task, majority baselines, and a report "
                    "directory (metrics.json with model/manifest/recipe hashes, "
                    "predictions.parquet, confusion matrices and metric bars as PNG). The "
                    "split, batch size, answer budget and media settings are the run's "
                    "recipe's (defaults for a model outside a run), changed with KEY=VALUE "
                    "overrides, e.g. eval.split=valid eval.batch_size=8 media.num_frames=4.")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="eval.* and media.* settings, as in a recipe")
    run.add_argument("--model", help="run directory, stage checkpoint or HF model directory")
    run.add_argument("--manifest", help="EMT manifest (default: the run's)")
    run.add_argument("--tasks", nargs="+", metavar="TASK", choices=TASK_NAMES,
                     help="only these tasks")
    run.add_argument("--out", help="report directory (default: RUN/eval/<stage>-<split>)")
    run.add_argument("--actors", type=positive_int,
                     help="model actors (default: eval.num_actors, 1 outside a run)")
    run.add_argument("--previous", help="an earlier report or run to draw in the bar chart")
    run.add_argument("--cache", help="media cache root (default: the run's, or beside --out)")
    run.set_defaults(func=_eval)
    compare = ev.add_parser(
        "compare", help="print two evaluations side by side",
        description="Print every metric two evaluation reports share, side by side with the "
                    "difference. A and B are report directories or run directories (their "
                    "latest report).")
    compare.add_argument("a", help="report or run directory A")
    compare.add_argument("b", help="report or run directory B")
    compare.set_defaults(func=_compare)
