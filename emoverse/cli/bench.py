"""`emoverse bench ...`: benchmarks that print side-by-side ratios."""

from __future__ import annotations

from emoverse.cli.arguments import positive_int


def _bench_media(args) -> int:
    from emoverse.benchmarks.media import report, run

    detectors = tuple(dict.fromkeys(args.detector))  # keep the order, drop repeats
    print(report(run(args.clips, args.scale, detectors, args.yunet_model, args.workdir,
                     args.frames, args.side, args.decode_side, not args.no_audio)))
    return 0


def _bench_train(args) -> int:
    if args.like:
        from emoverse.benchmarks.train_like import report, run

        print(report(run(args.like, args.layers, args.model, args.steps, args.warmup,
                         args.batch_size, args.recipe, args.precision, args.workdir,
                         args.audio)))
        return 0
    if args.model or args.layers or args.audio:
        raise ValueError("--model, --layers and --audio go with --like NAME")
    from emoverse.benchmarks.train import report, run

    print(report(run(args.samples, args.epochs, args.batch_size or 16, args.stream,
                     args.workdir)))
    return 0


def _bench_sweep(args) -> int:
    from emoverse.benchmarks.sweep import report, run

    print(report(run(args.levels, args.asha_trials, args.workdir, args.demo_size)))
    return 0


def _bench_serve(args) -> int:
    from emoverse.benchmarks.serve import report, run

    print(report(run(args.model, args.clients, args.duration, args.new_tokens, args.demo_size,
                     args.workdir)))
    return 0


def register(sub) -> None:
    bench = sub.add_parser(
        "bench", help="benchmarks that print side-by-side ratios",
        description="Benchmarks. Each measures the alternatives in one run on the same "
                    "data and prints their ratios, so results hold on a busy machine.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    bm = bench_sub.add_parser(
        "media", help="face detectors side by side: media stage vs a naive loop, faces found",
        description="On the same generated clips: (a) a naive single-process loop decoding "
                    "every frame, (b) the Ray Data media stage on all CPUs, (c) decoding the "
                    "sampled frames alone, (d) the media stage with the clips' audio too, on "
                    "SCALE x N clips. Prints clips/s, b/a, b/c, d/b and the peak memory of "
                    "the Ray processes on N and SCALE x N clips.")
    bm.add_argument("--clips", type=positive_int, default=150, help="clips (default 150)")
    bm.add_argument("--frames", type=positive_int, default=48,
                    help="frames per generated clip (default 48)")
    bm.add_argument("--side", type=positive_int, default=360,
                    help="frame side of the generated clips in px (default 360)")
    bm.add_argument("--decode-side", type=positive_int, default=480,
                    help="the media stage's max_decode_side (default 480)")
    bm.add_argument("--scale", type=positive_int, default=5,
                    help="size factor of the memory check's larger set (default 5)")
    bm.add_argument("--detector", choices=["mtcnn", "yunet", "haar"], nargs="+",
                    default=["mtcnn", "haar"],
                    help="detectors to compare (default: mtcnn haar; yunet needs --yunet-model)")
    bm.add_argument("--yunet-model", help="YuNet ONNX weights (detector yunet)")
    bm.add_argument("--workdir", help="where to write the clips (default: a temp dir)")
    bm.add_argument("--no-audio", action="store_true",
                    help="skip (d), the media stage with each clip's audio track too")
    bm.set_defaults(func=_bench_media)

    from emoverse.model.families import family_names

    bt = bench_sub.add_parser(
        "train", help="Ray Train + Ray Data vs a plain torch loop; or a real model's shapes",
        description="Train the tiny model on the same clips and mixture (a) in a plain "
                    "single-process torch loop and (b) through Ray Train fed by Ray Data "
                    "from the media cache, as `emoverse train` runs it. Prints samples/s of "
                    "both, b/a and the share of step time the workers waited for data. With "
                    "--like NAME: a recipe's stage 1 at a real family's shapes (random init, "
                    "or --model DIR) without Ray, printing samples/s, tokens/s and peak "
                    "memory (GPU when there is one).")
    bt.add_argument("--like", choices=family_names(),
                    help="benchmark a real family's shapes instead (no Ray)")
    bt.add_argument("--layers", type=positive_int,
                    help="with --like: layers per stack (default: real depth)")
    bt.add_argument("--model", help="with --like: a real checkpoint directory to train")
    bt.add_argument("--recipe", help="with --like: recipe whose stage 1, frames and size to "
                                     "use (default: the family's, else m2se-paper)")
    bt.add_argument("--steps", type=positive_int, default=8,
                    help="with --like: timed steps (default 8)")
    bt.add_argument("--warmup", type=positive_int, default=2,
                    help="with --like: untimed first steps (default 2)")
    bt.add_argument("--audio", type=float, default=0.0, metavar="SECONDS",
                    help="with --like: each sample also carries SECONDS of audio, which the "
                         "stage hears (a family that hears, such as qwen2.5-omni-7b; "
                         "default 0: frames only)")
    bt.add_argument("--precision", choices=["fp32", "bf16"],
                    help="with --like: override the stage's precision (default: the "
                         "recipe's on GPU, fp32 on CPU)")
    bt.add_argument("--samples", type=positive_int, default=4000,
                    help="samples per epoch (default 4000, as the tiny recipe's stage 1)")
    bt.add_argument("--epochs", type=positive_int, default=6,
                    help="epochs (default 6, as the tiny recipe's stage 1)")
    bt.add_argument("--stream", action="store_true",
                    help="re-read the epoch from the cache every epoch instead of keeping "
                         "it in the object store")
    bt.add_argument("--batch-size", type=positive_int,
                    help="global batch size (default 16; with --like, the recipe's batch "
                         "per worker)")
    bt.add_argument("--workdir", help="where to write model, clips and runs (default: temp)")
    bt.set_defaults(func=_bench_train)

    bs = bench_sub.add_parser(
        "sweep", help="a full grid vs ASHA over the same mixture space: compute and best",
        description="Search the tiny recipe's stage-1 MSA and FER weights (a) on a full "
                    "L x L grid without early stopping and (b) with ASHA and Optuna over the "
                    "same ranges. Prints trial-iterations, stages trained, wall time and the "
                    "best validation objective of each, and the ratios.")
    bs.add_argument("--levels", type=positive_int, default=3,
                    help="grid points per searched weight (default 3: a 3x3 grid)")
    bs.add_argument("--asha-trials", type=positive_int,
                    help="ASHA's trials (default: half the grid's points, rounded up)")
    bs.add_argument("--demo-size", type=positive_int,
                    help="demo samples; 4%% of them are the validation split the objective "
                         "is measured on (default 1600: 64 clips)")
    bs.add_argument("--workdir", help="where to write the sweeps (default: a temp dir)")
    bs.set_defaults(func=_bench_sweep)

    bv = bench_sub.add_parser(
        "serve", help="the serving app with dynamic batching off vs on, and streamed "
                      "(req/s, latency, time to first token)",
        description="Deploy the serving application three times on this machine's Ray: "
                    "dynamic batching off, on, and on with the requests as streamed chats; "
                    "drive each with the same closed-loop load: CLIENTS threads sending "
                    "requests (demo clips of all five tasks, by path) back to back for "
                    "DURATION seconds. Prints requests/s, p50/p99 latency, time to first "
                    "token, errors and mean batch size of each, and the ratios on/off and "
                    "stream/on.")
    bv.add_argument("--model", help="run or model directory (default: the tiny random-init "
                                    "model, every answer exactly --new-tokens long)")
    bv.add_argument("--clients", type=positive_int, default=16, help="concurrent clients (16)")
    bv.add_argument("--duration", type=float, default=20.0, help="seconds per mode (20)")
    bv.add_argument("--new-tokens", type=positive_int, default=16,
                    help="answer budget of every task (default 16)")
    bv.add_argument("--demo-size", type=positive_int, default=40,
                    help="demo rows to request, cycled (default 40)")
    bv.add_argument("--workdir", help="where to write the model and clips (default: temp)")
    bv.set_defaults(func=_bench_serve)
