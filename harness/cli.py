"""``python -m harness`` sub-commands."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from harness import bind
from harness.cluster import LOOPBACK, ClusterError, driver_host_for
from harness.worker import load_hostmap
from harness.ops import OpsUnavailableError
from harness.private import InputError, protocol_names

logger = logging.getLogger("harness")


def _predict(args: argparse.Namespace) -> int:
    from harness.evaluate import run

    summary = run(args.protocol, args.deployment, args.batch, args.images,
                  weights=args.weights, cluster_config=args.cluster_config).summary()
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            shown = f"{value:.6g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.report import write_report  # noqa: PLC0415

    md = write_report(args.run_dir)
    print(md)
    print(md.with_name("report.png"))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from harness.report import compare  # noqa: PLC0415

    print(compare(args.run_a, args.run_b, args.baseline), end="")
    return 0


def _check_baseline(args: argparse.Namespace) -> int:
    from harness.report import check  # noqa: PLC0415

    problems = check(args.run_dir, args.baseline)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print("ok")
    return 0


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path  # noqa: PLC0415

    from harness.baseline import BASELINE_PATH  # noqa: PLC0415
    from harness.results import RESULTS_DIR  # noqa: PLC0415

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
    p.add_argument("--protocol", default="securenn", help=f"one of {', '.join(protocol_names())}")
    p.add_argument("--deployment", default="inprocess", choices=("inprocess", "cluster"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--weights", default=None, help="Keras HDF5 weights (default: the committed ones)")
    p.add_argument("--cluster-config", default=None, metavar="FILE",
                   help="with --deployment cluster: hostmap of hand-started workers "
                        "(default: start an auto-managed cluster on loopback)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_predict)
    _add_report_commands(sub)
    return parser


def _driver_bind(args: argparse.Namespace) -> str | None:
    """The address a cluster-driving command's own TensorFlow server must listen on."""
    if getattr(args, "deployment", None) != "cluster":
        return None
    if getattr(args, "cluster_config", None):
        return driver_host_for(load_hostmap(args.cluster_config).values())
    return LOOPBACK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        host = _driver_bind(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if host is not None:
        bind.reexec(host, ["-m", "harness", *argv])  # returns only when already under the shim
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClusterError, OpsUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
