"""The ``tokenproxy`` console script: ``run --workers N`` goes to the supervisor before the
server stack is imported (the parent stays small); everything else to :mod:`proxy.cli`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from proxy.arguments import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run" and args.workers > 1:
        from proxy.supervisor import supervise

        try:
            return supervise(args)
        except OSError as exc:  # e.g. the port is taken
            print(f"tokenproxy: {exc.strerror or exc}", file=sys.stderr)
            return 2
    from proxy.cli import dispatch

    return dispatch(args)
