"""``periscope target-python``: print the path of a CPython 3.14 interpreter, provisioning one if needed."""

from __future__ import annotations

import argparse

NAME = "target-python"
HELP = "print the path of a CPython 3.14 interpreter to start targets with (provisions one if needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-provision",
        action="store_true",
        help="only look (PERISCOPE_TARGET_PYTHON, PATH, uv, the cache); never download",
    )


def run(args: argparse.Namespace) -> int:
    from explorer.pythons import find_target_python

    print(find_target_python(provision=not args.no_provision))
    return 0
