"""The ``periscope`` command: the TUI by default, and one subcommand per scriptable action."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from explorer import __version__
from explorer.commands import COMMANDS
from explorer.errors import PeriscopeError
from explorer.memory import MemoryFault


def _command_modules() -> dict[str, ModuleType]:
    modules = {}
    for module_name in COMMANDS:
        module = importlib.import_module(f"explorer.commands.{module_name}")
        modules[module.NAME] = module
    return modules


def build_parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """The full argument parser: top-level options plus every subcommand."""
    parser = argparse.ArgumentParser(
        prog="periscope",
        description=(
            "Look inside running CPython 3.14+ processes: live threads, stacks, locals and a REPL. "
            "Without a command, opens the process list."
        ),
        epilog="Run 'periscope COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"periscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in modules.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def build_app_parser() -> argparse.ArgumentParser:
    """The parser for ``periscope [PID] [--demo]`` (the TUI)."""
    parser = argparse.ArgumentParser(prog="periscope", add_help=False)
    parser.add_argument("pid", nargs="?", type=int)
    parser.add_argument("--demo", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``periscope`` and ``python -m explorer``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = _command_modules()
    try:
        if argv and argv[0] in modules or any(a in ("-h", "--help", "--version") for a in argv[:1]):
            args = build_parser(modules).parse_args(argv)
            return int(args.run(args) or 0)
        app_args, unknown = build_app_parser().parse_known_args(argv)
        if unknown:
            build_parser(modules).parse_args(argv)  # prints the usage error and exits 2
        from explorer.commands.app import run_app

        return run_app(pid=app_args.pid, demo=app_args.demo)
    except PeriscopeError as error:
        print(f"periscope: {error}", file=sys.stderr)
        return 1
    except MemoryFault as error:
        # The target changed under a read that was not retried (threads exiting, memory freed).
        print(f"periscope: the target changed while periscope read it ({error.strerror}): try again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
