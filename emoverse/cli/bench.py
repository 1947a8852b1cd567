"""`emoverse bench ...`: benchmarks that print side-by-side ratios."""

from __future__ import annotations

from emoverse.cli.arguments import positive_int


def _bench_media(args) -> int:
    from emoverse.benchmarks.media import report, run

    print(report(run(args.clips, args.scale, args.detector, args.yunet_model, args.workdir,
                     args.frames, args.side, args.decode_side)))
    return 0


def register(sub) -> None:
    bench = sub.add_parser(
        "bench", help="benchmarks that print side-by-side ratios",
        description="Benchmarks. Each measures the alternatives in one run on the same "
                    "data and prints their ratios, so results hold on a busy machine.")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    bm = bench_sub.add_parser(
        "media", help="media stage vs a naive loop vs decoding alone, and memory",
        description="On the same generated clips: (a) a naive single-process loop decoding "
                    "every frame, (b) the Ray Data media stage on all CPUs, (c) decoding the "
                    "sampled frames alone, on SCALE x N clips. Prints clips/s, b/a, b/c and the peak memory of "
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
    bm.add_argument("--detector", choices=["haar", "yunet"], default="haar")
    bm.add_argument("--yunet-model", help="YuNet ONNX weights (detector yunet)")
    bm.add_argument("--workdir", help="where to write the clips (default: a temp dir)")
    bm.set_defaults(func=_bench_media)
