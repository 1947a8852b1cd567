"""`emoverse sweep RECIPE --space SPACE.yaml --trials N`."""

from __future__ import annotations

import time

from emoverse.cli.arguments import positive_int


def _sweep(args) -> int:
    from emoverse.recipe import load_recipe
    from emoverse.sweep_space import load_space
    from emoverse.drivers.sweep import run_sweep

    recipe = load_recipe(args.recipe, args.overrides)
    space = load_space(args.space)
    space.check(recipe)  # unknown stages or entries fail before any work
    out = run_sweep(recipe, space, args.trials,
                    args.sweep_dir or f"sweeps/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                    search=args.search, seed=args.seed, baseline=not args.no_baseline)
    columns = [c for c in out["table"].columns if c != "trial"]
    print(out["table"][columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"best trial's recipe: {out['recipe']} (emoverse train {out['recipe']})")
    return 0


def register(sub) -> None:
    sw = sub.add_parser(
        "sweep", help="search the stages' task-mixing weights on Ray Tune",
        description="Search a recipe's stage mixture weights (on the simplex of task shares; "
                    "optionally learning rates and LoRA ranks) on Ray Tune with ASHA early "
                    "stopping, optimising the validation objective (mean primary metric over "
                    "tasks). Trials reuse the media cache and shared stage prefixes. Writes "
                    "trials.csv, objective.png and best-recipe.yaml; re-running with the same "
                    "--sweep-dir resumes.")
    sw.add_argument("recipe", help="shipped recipe name or recipe YAML file")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    sw.add_argument("--space", required=True,
                    help="search space YAML, or a shipped space by name (e.g. m2se-tiny-mixture; "
                         "see emoverse/sweep.py)")
    sw.add_argument("--trials", type=positive_int, default=8, help="trials (default 8)")
    sw.add_argument("--sweep-dir", help="sweep directory (default: sweeps/<recipe>-<time>)")
    sw.add_argument("--search", choices=["optuna", "random"], default="optuna",
                    help="search algorithm: Optuna's TPE (default) or random sampling")
    sw.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    sw.add_argument("--no-baseline", action="store_true",
                    help="do not evaluate the recipe's own values as the first trial")
    sw.set_defaults(func=_sweep)
