"""`emoverse serve run RUN_OR_MODEL [KEY=VALUE ...]` and
`emoverse serve build RUN_OR_MODEL --out FILE [KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from emoverse.cli.arguments import positive_int
from emoverse.console import logger

log = logger(__name__)


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


def _model(args) -> str:
    """The RUN_OR_MODEL argument: a local path made absolute, or the cluster's own path."""
    if not args.model or ("=" in args.model and not Path(args.model).exists()):
        raise ValueError(f"usage: emoverse serve {args.serve_command} RUN_OR_MODEL "
                         "[KEY=VALUE ...] [options]")
    model = Path(args.model)
    return str(model.resolve()) if model.exists() or args.serve_command == "run" else args.model


def _run(args) -> int:
    from emoverse.serving.app import run_app

    served = _arguments(args, _model(args))
    log.info(f"serving {served.model} on http://{args.host}:{args.port} "
             "(GET / the page, /healthz, /v1/models, /openapi.json; POST /v1/analyze, "
             "/v1/chat/completions); Ctrl-C stops")

    def ready(url: str, metrics: str) -> None:
        log.info(f"ready: the page at {url}, the API at {url}v1, metrics at {metrics}")
        if args.open:
            import webbrowser

            if not webbrowser.open(url):
                log.info(f"no browser to open here: open {url} yourself")

    run_app(served, args.host, args.port, blocking=True, metrics_port=args.metrics_port,
            on_ready=ready)
    return 0


def _build(args) -> int:
    from emoverse.serving.config import serve_config, write_serve_config

    if not args.out:
        raise ValueError("serve build needs --out FILE (the Serve config to write)")
    served = _arguments(args, _model(args))
    path = write_serve_config(serve_config(served, args.name, args.route_prefix, args.host,
                                           args.port), args.out)
    if not Path(served.model).exists():
        print(f"note: {served.model} does not exist here; it must exist where Serve runs")
    print(f"wrote {path}: `serve deploy {path}`, or embed it as a RayService's serveConfigV2")
    return 0


def _served_model_options() -> argparse.ArgumentParser:
    """What `run` and `build` share: the model, its serving arguments, where it listens."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("model", nargs="?", metavar="RUN_OR_MODEL",
                        help="run directory, stage checkpoint or HF model directory")
    shared.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="serving arguments, e.g. batching.enabled=false "
                             "limits.max_upload_mb=16 model_server.autoscaling.max_replicas=4 "
                             "default_model=ID trust_remote_code=true")
    shared.add_argument("--config", help="YAML of serving arguments, or a Serve config file")
    shared.add_argument("--media-root", help="directory `video_path` may point into "
                                             "(default: none, uploads only)")
    shared.add_argument("--adapter", action="append", metavar="ID=PATH",
                        help="serve a LoRA adapter under model id ID (repeatable); its base is "
                             "the last stage unless adapters.ID.base=MODEL_ID")
    shared.add_argument("--port", type=positive_int, default=8000, help="HTTP port (8000)")
    return shared


def register(sub) -> None:
    serve = sub.add_parser(
        "serve", help="serve a run or model over HTTP on Ray Serve, or write its Serve config",
        description="`emoverse serve run` serves a run (each finished stage under its name; "
                    "stage 2's adapter over stage 1's weights on one base per replica), a "
                    "stage checkpoint or an exported model on Ray Serve: POST /v1/analyze, "
                    "POST /v1/chat/completions, GET /v1/models, GET /healthz, with dynamic "
                    "batching, autoscaling and 503 on overload. `emoverse serve build` writes "
                    "the same application's Serve config (`serve deploy`, a RayService's "
                    "serveConfigV2) instead."
    ).add_subparsers(dest="serve_command", metavar="ACTION", required=True)
    run = serve.add_parser(
        "run", parents=[_served_model_options()], help="serve on this machine's Ray (or "
        "RAY_ADDRESS's cluster) until Ctrl-C",
        description="Serve a run, stage checkpoint or model directory on Ray Serve until "
                    "Ctrl-C. KEY=VALUE overrides set serving arguments "
                    "(emoverse.serving.config.ServeArgs).")
    run.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    run.add_argument("--open", action="store_true", help="open the page in a browser once "
                                                         "the application answers")
    run.add_argument("--metrics-port", type=positive_int, help="Prometheus metrics port of "
                     "the local Ray instance (default: one Ray picks, printed when ready)")
    run.set_defaults(func=_run)
    build = serve.add_parser(
        "build", parents=[_served_model_options()], help="write the Serve config for serve "
        "deploy or a RayService",
        description="Write the Serve config of the application (`serve deploy FILE`, or a "
                    "RayService's serveConfigV2). A model path that does not exist here is "
                    "kept as given: it must exist where Serve runs.")
    build.add_argument("--out", help="the Serve config file to write (required)")
    build.add_argument("--host", default="0.0.0.0", help="HTTP host (default 0.0.0.0: a "
                                                         "cluster listens on all)")
    build.add_argument("--name", default="emoverse", help="application name")
    build.add_argument("--route-prefix", default="/", help="route prefix (default /)")
    build.set_defaults(func=_build)
