"""``python -m harness`` sub-commands."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Sequence

from harness.net import bind
from harness.net.cluster import LOOPBACK, ClusterError, driver_host_for
from harness.net.worker import load_hostmap
from harness.errors import InputError
from harness.names import PROTOCOLS
from harness.native import BuildError

logger = logging.getLogger("harness")


def _predict(args: argparse.Namespace) -> int:
    from harness.inference.evaluate import run

    summary = run(args.protocol, args.deployment, args.batch, args.images,
                  weights=args.weights, cluster_config=args.cluster_config, model=args.model,
                  data=args.data, variant=args.variant).summary()
    summary = {"model": args.model, "variant": args.variant, **summary}
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            shown = f"{value:.6g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.results.report import write_report  # noqa: PLC0415

    md = write_report(args.run_dir)
    print(md)
    print(md.with_name("report.png"))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from harness.results.compare import compare  # noqa: PLC0415

    print(compare(args.run_a, args.run_b, args.baseline), end="")
    return 0


def _check_baseline(args: argparse.Namespace) -> int:
    from harness.results.report import check  # noqa: PLC0415

    problems = check(args.run_dir, args.baseline)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print("ok")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from harness.inference.serving import ServingError, run_serve  # noqa: PLC0415

    try:
        served = run_serve(args.protocol, args.num_requests, config=args.config,
                           weights=args.weights, model=args.model,
                           hostmap_out=args.hostmap_out,
                           idle_timeout=args.idle_timeout, request_timeout=args.request_timeout,
                           clients=args.clients, max_batch=args.max_batch,
                           batch_window_ms=args.batch_window)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0 if args.num_requests is None or served >= args.num_requests else 1


def _client(args: argparse.Namespace) -> int:
    from harness.inference.client_cli import run_client  # noqa: PLC0415
    from harness.inference.serving_slots import ServingError  # noqa: PLC0415

    try:
        return run_client(args.config, args.image or [], repeat=args.repeat, as_json=args.json,
                          timeout=args.timeout, wait=args.wait, stdin=args.stdin)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


def _add_serving_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="share the model on a cluster and serve private "
                                     "predictions to a separate client")
    p.add_argument("--protocol", default="securenn", help=f"one of {', '.join(PROTOCOLS)}")
    p.add_argument("--num-requests", type=int, default=None, metavar="N",
                   help="serve N requests, then stop (default: until Ctrl-C/SIGTERM)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="hostmap of hand-started workers server0-2 with a prediction-client "
                        "slot (default: start server0-2 on loopback)")
    p.add_argument("--model", default="tutorial", metavar="NAME_OR_PATH",
                   help="a zoo name (tutorial, A, B, C, D) or a model file: .h5, .keras or a "
                        "SavedModel directory (default: tutorial)")
    p.add_argument("--weights", default=None,
                   help="Keras HDF5 weights of the tutorial model (default: the committed ones)")
    p.add_argument("--hostmap-out", default=None, metavar="PATH",
                   help="write the hostmap the client needs here (atomically, once serving)")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="stop after S seconds without a request (default: wait for ever)")
    p.add_argument("--request-timeout", type=float, default=10.0, metavar="S",
                   help="after the last request, wait up to S s for clients to collect "
                        "their results")
    p.add_argument("--clients", type=int, default=None, metavar="K",
                   help="client slots: up to K clients at once, more wait their turn "
                        "(default: 4; with --config, the hostmap's slots)")
    p.add_argument("--max-batch", type=int, default=1, metavar="B",
                   help="answer up to B requests in one private prediction (default: 1)")
    p.add_argument("--batch-window", type=float, default=20.0, metavar="MS",
                   help="with --max-batch > 1: wait up to MS ms for a batch to fill "
                        "(default: 20)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("client", help="request private predictions from a served model")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="the hostmap written by `serve --hostmap-out`")
    p.add_argument("--image", action="append", metavar="PATH_OR_INDEX",
                   help="a test-split index or a .npy input (floats in [0, 1], the served "
                        "model's input shape or as many values); repeatable")
    p.add_argument("--repeat", type=int, default=1, metavar="K", help="send each image K times")
    p.add_argument("--stdin", action="store_true",
                   help="read one image per line from stdin, answer one JSON line each")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up on a request after S seconds")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="wait up to S seconds for the servers, a free client slot and "
                        "the served model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_client)


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path  # noqa: PLC0415

    from harness.results.baseline import BASELINE_PATH  # noqa: PLC0415
    from harness.results.store import RESULTS_DIR  # noqa: PLC0415

    latest = RESULTS_DIR / "latest"
    p = sub.add_parser("report", help="(re)write report.md/report.png of a saved run")
    p.add_argument("run_dir", nargs="?", type=Path, default=latest, metavar="RUN_DIR",
                   help="run directory with summary.json (default: results/latest)")
    p.set_defaults(func=_report)
    p = sub.add_parser("compare", help="compare two saved runs (latency and accuracy)")
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="the earlier run directory")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="the later run directory")
    p.add_argument("--baseline", type=Path, default=BASELINE_PATH, metavar="FILE",
                   help="flag values outside these bounds (default: results/baseline.json)")
    p.set_defaults(func=_compare)
    p = sub.add_parser("check-baseline",
                       help="exit 1 if a run's accuracy is outside the baseline bounds")
    p.add_argument("run_dir", nargs="?", type=Path, default=latest, metavar="RUN_DIR",
                   help="run directory with summary.json (default: results/latest)")
    p.add_argument("--baseline", type=Path, default=BASELINE_PATH, metavar="FILE",
                   help="baseline bounds (default: results/baseline.json)")
    p.set_defaults(func=_check_baseline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="private vs plaintext prediction of MNIST test digits")
    p.add_argument("--protocol", default="securenn", help=f"one of {', '.join(PROTOCOLS)}")
    p.add_argument("--deployment", default="inprocess", choices=("inprocess", "cluster"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--model", default="tutorial", metavar="NAME_OR_PATH",
                   help="a zoo name (tutorial, A, B, C, D) or a model file: .h5, .keras or a "
                        "SavedModel directory (default: tutorial)")
    p.add_argument("--data", default=None, metavar="FILE.npz",
                   help="test inputs: arrays x (in the model's input shape) and y (labels); "
                        "default: the offline MNIST test split")
    p.add_argument("--variant", default="tuned", choices=("stock", "tuned"),
                   help="tf-encrypted's own protocol code (stock) or with our speed changes")
    p.add_argument("--weights", default=None, help="Keras HDF5 weights (default: the committed ones)")
    p.add_argument("--cluster-config", default=None, metavar="FILE",
                   help="with --deployment cluster: hostmap of hand-started workers "
                        "(default: start an auto-managed cluster on loopback)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_predict)
    _add_report_commands(sub)
    _add_serving_commands(sub)
    return parser


def _driver_bind(args: argparse.Namespace) -> str | None:
    """The address a cluster-driving command's own TensorFlow server must listen on:
    loopback for an auto-managed cluster, else what ``driver_host_for`` picks for the
    hostmap; the client listens on its own slot."""
    if args.command == "client":
        from harness.inference.serving_slots import client_bind_host  # noqa: PLC0415

        return client_bind_host(args.config)
    if args.command == "serve":
        config = args.config
    elif getattr(args, "deployment", None) == "cluster":
        config = args.cluster_config
    else:
        return None
    return driver_host_for(load_hostmap(config).values()) if config else LOOPBACK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        host = _driver_bind(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.verbose:  # TensorFlow's C++ start-up lines (CUDA probing) only with -v
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if host is not None:
        bind.reexec(host, ["-m", "harness", *argv])  # returns only when already under the shim
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # SIGTERM unwinds like Ctrl-C: clusters stop and no half-written file stays behind
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClusterError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
