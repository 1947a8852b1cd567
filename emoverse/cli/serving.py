"""`emoverse serve RUN_OR_MODEL [KEY=VALUE ...]` and `emoverse serve build RUN_OR_MODEL --out F`."""

from __future__ import annotations

from pathlib import Path

from emoverse.cli.arguments import positive_int
from emoverse.console import logger

log = logger(__name__)

BUILD = "build"


def _arguments(args, model: str):
    from emoverse.serving.config import serve_args

    overrides = list(args.overrides)
    if args.media_root:
        overrides.append(f"media_root={Path(args.media_root).resolve()}")
    for item in args.adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r} is not of the form ID=PATH")
        overrides.append(f"adapters.{name}.path={path}")
    return serve_args(model, args.config, overrides)


def _serve(args) -> int:
    if args.target == BUILD:
        return _build(args)
    if any("=" not in o for o in args.overrides):
        raise ValueError(f"serve takes one RUN_OR_MODEL, then KEY=VALUE overrides; got "
                         f"{' '.join(args.overrides)}")
    from emoverse.serving.app import run_app

    served = _arguments(args, str(Path(args.target).resolve()))
    log.info(f"serving {served.model} on http://{args.host}:{args.port} "
             "(GET /healthz, /v1/models; POST /v1/analyze, /v1/chat/completions); Ctrl-C stops")
    run_app(served, args.host, args.port, blocking=True)
    return 0


def _build(args) -> int:
    from emoverse.serving.config import serve_config, write_serve_config

    models = [o for o in args.overrides if "=" not in o]
    if len(models) != 1:
        raise ValueError("usage: emoverse serve build RUN_OR_MODEL --out FILE [KEY=VALUE ...]")
    if not args.out:
        raise ValueError("serve build needs --out FILE (the Serve config to write)")
    args.overrides = [o for o in args.overrides if "=" in o]
    model = Path(models[0])  # a local path is made absolute; others are the cluster's
    served = _arguments(args, str(model.resolve()) if model.exists() else models[0])
    host = "0.0.0.0" if args.host == "127.0.0.1" else args.host  # a cluster listens on all
    path = write_serve_config(serve_config(served, args.name, args.route_prefix, host,
                                           args.port), args.out)
    if not Path(served.model).exists():
        print(f"note: {served.model} does not exist here; it must exist where Serve runs")
    print(f"wrote {path}: `serve deploy {path}`, or embed it as a RayService's serveConfigV2")
    return 0


def register(sub) -> None:
    serve = sub.add_parser(
        "serve", help="serve a run or model over HTTP on Ray Serve (or write its config)",
        usage="emoverse serve RUN_OR_MODEL [KEY=VALUE ...] [options]\n"
              "       emoverse serve build RUN_OR_MODEL --out FILE [KEY=VALUE ...] [options]",
        description="Serve a run (each finished stage under its name; stage 2's adapter over "
                    "stage 1's weights on one base per replica), a stage checkpoint or an "
                    "exported model on Ray Serve: POST /v1/analyze, POST /v1/chat/completions, "
                    "GET /v1/models, GET /healthz, with dynamic batching, autoscaling and "
                    "503 on overload. KEY=VALUE overrides set serving arguments, e.g. "
                    "batching.enabled=false limits.max_upload_mb=16 "
                    "model_server.autoscaling.max_replicas=4 default_model=ID "
                    "trust_remote_code=true. `serve build` writes the Serve config "
                    "(`serve deploy`, RayService serveConfigV2) instead of serving; a model "
                    "directory named `build` is given as ./build.")
    serve.add_argument("target", metavar="RUN_OR_MODEL",
                       help="run directory, stage checkpoint or HF model directory; or `build`")
    serve.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="serving arguments (after `build`: first the RUN_OR_MODEL)")
    serve.add_argument("--config", help="YAML of serving arguments, or a Serve config file")
    serve.add_argument("--media-root", help="directory `video_path` may point into "
                                            "(default: none, uploads only)")
    serve.add_argument("--adapter", action="append", metavar="ID=PATH",
                       help="serve a LoRA adapter under model id ID (repeatable); its base is "
                            "the last stage unless adapters.ID.base=MODEL_ID")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; "
                                                           "build: 0.0.0.0)")
    serve.add_argument("--port", type=positive_int, default=8000, help="HTTP port (8000)")
    serve.add_argument("--out", help="build: the Serve config file to write")
    serve.add_argument("--name", default="emoverse", help="build: application name")
    serve.add_argument("--route-prefix", default="/", help="build: route prefix (default /)")
    serve.set_defaults(func=_serve)
