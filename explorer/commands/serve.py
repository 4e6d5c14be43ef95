"""``periscope serve --stdio``: the far side of ``--host`` and ``--exec`` (see explorer.serve)."""

from __future__ import annotations

import argparse
import sys

NAME = "serve"
HELP = "speak periscope's remote protocol on stdin/stdout (what --host and --exec run on the far side)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stdio", action="store_true", required=True, help="serve on stdin and stdout (the only transport)")


def run(args: argparse.Namespace) -> int:
    from explorer.serve import serve_stdio

    if sys.stdin is None or sys.stdin.isatty():
        print("periscope: serve --stdio speaks msgpack on stdin; run it through --host or --exec", file=sys.stderr)
        return 2
    return serve_stdio()
