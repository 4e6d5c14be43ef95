"""``periscope target-python [--version 3.X]``: print the path of a CPython interpreter of a supported minor, provisioning one if needed."""

from __future__ import annotations

import argparse

NAME = "target-python"
HELP = "print the path of a CPython 3.14 or 3.15 interpreter to start targets with (provisions one if needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        default=None,
        metavar="3.X",
        help="the minor to find or provision: 3.14 (the default) or 3.15",
    )
    parser.add_argument(
        "--no-provision",
        action="store_true",
        help="only look (PERISCOPE_TARGET_PYTHON_3_X, PERISCOPE_TARGET_PYTHON, PATH, the cache, uv); never download",
    )


def run(args: argparse.Namespace) -> int:
    from explorer.pythons import find_target_python, parse_minor
    from explorer.versions import DEFAULT_MINOR

    minor = parse_minor(args.version) if args.version else DEFAULT_MINOR
    print(find_target_python(minor, provision=not args.no_provision))
    return 0
