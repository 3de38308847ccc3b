"""``python -m harness`` sub-commands."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from harness.private import InputError, protocol_names

logger = logging.getLogger("harness")


def _predict(args: argparse.Namespace) -> int:
    from harness.evaluate import run

    summary = run(args.protocol, args.deployment, args.batch, args.images,
                  weights=args.weights).summary()
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            shown = f"{value:.6g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    return 0


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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
