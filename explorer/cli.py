"""The ``periscope`` command: the TUI by default, and one subcommand per scriptable action.

Start-up time matters (``periscope stack PID`` is meant to be quicker than ``py-spy dump``): the
command list comes from the static table in :mod:`explorer.commands`, only the module of the
command that runs (or whose ``--help`` is asked) is imported, and a command may parse its
plainest forms itself (``parse_quick(argv)``) so that argparse is not even imported for them.
"""

from __future__ import annotations

import sys
from collections.abc import Collection

from explorer import __version__
from explorer.commands import COMMANDS, SUMMARIES
from explorer.errors import PeriscopeError
from explorer.memory import MemoryFault

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from types import ModuleType


TOP_USAGE = "periscope [PID] [--demo]\n       periscope COMMAND [ARGS ...]"
"""The forms of the command line, as ``periscope --help`` shows them."""


def _import_command(module_name: str) -> ModuleType:
    name = f"explorer.commands.{module_name}"
    __import__(name)  # importlib.import_module without importing importlib (start-up time)
    return sys.modules[name]


def command_summaries() -> dict[str, tuple[str, str]]:
    """Command name -> (module name, one-line help), in ``periscope --help`` order.

    Imports only the command modules that the static table does not describe.
    """
    summaries = {}
    for module_name in COMMANDS:
        known = SUMMARIES.get(module_name)
        if known is None:
            module = _import_command(module_name)
            known = (module.NAME, module.HELP)
        summaries[known[0]] = (module_name, known[1])
    return summaries


def build_parser(
    commands: dict[str, tuple[str, str]], with_options: Collection[str] | None = None, *, tui_arguments: bool = False
) -> argparse.ArgumentParser:
    """The argument parser: top-level options plus every subcommand.

    Each subcommand gets its options (and its module is imported) only when it is named in
    ``with_options``; None means every one. The others are listed with their help all the same.
    ``tui_arguments`` lists ``PID`` and ``--demo`` (the TUI's own arguments) too, for ``--help``.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="periscope",
        usage=TOP_USAGE if tui_arguments else None,  # a subcommand's usage starts with the top one's
        description=(
            "Look inside running CPython 3.14 and 3.15 processes: live threads, stacks, locals and a REPL. "
            "'periscope' opens the process list (the TUI), 'periscope PID' attaches to PID in it, "
            "'periscope --demo' starts a demo program and attaches to it. The TUI needs a terminal; "
            "in scripts use the commands ('snapshot', 'watch', 'stack', ...)."
        ),
        epilog=(
            "Run 'periscope COMMAND --help' for a command's options. Add --host [user@]host (ssh), --exec 'CMD ...' "
            "(kubectl exec -i POD --, docker exec -i CTR) or --hosts-file FILE to any of them to look there instead."
        ),
    )
    if tui_arguments:
        # Only in the top-level help: a PID positional ahead of the commands would take their names.
        parser.add_argument("pid", nargs="?", metavar="PID", help="open the TUI attached to this process")
        parser.add_argument("--demo", action="store_true", help="start the demo program and open the TUI attached to it")
    parser.add_argument("--version", action="version", version=f"periscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if with_options is None or name in with_options:
            module = _import_command(module_name)
            module.add_arguments(command)
            command.set_defaults(run=module.run)
    return parser


def build_app_parser() -> argparse.ArgumentParser:
    """The parser for ``periscope [PID] [--demo]`` (the TUI)."""
    import argparse

    parser = argparse.ArgumentParser(prog="periscope", add_help=False)
    parser.add_argument("pid", nargs="?", type=int)
    parser.add_argument("--demo", action="store_true")
    return parser


def suggest_command(word: str, commands: Collection[str]) -> str | None:
    """The command ``word`` is most likely a typo of (``stak`` -> ``stack``), or None."""
    import difflib

    close = difflib.get_close_matches(word, list(commands), n=1, cutoff=0.6)
    return close[0] if close else None


def _usage_error(message: str) -> int:
    print(f"usage: {TOP_USAGE}", file=sys.stderr)
    print(f"periscope: {message}", file=sys.stderr)
    return 2


def print_where_blocked(pid: int) -> None:
    """After "no thread ran Python": where each thread of ``pid`` waits, read from outside (no agent)."""
    from explorer.stacks import read_stacks
    from explorer.text import visible

    try:
        _version, stacks = read_stacks(pid)
    except (PeriscopeError, MemoryFault, OSError):
        return  # the message already says what to run
    for stack in stacks:
        top = stack.frames[0] if stack.frames else None
        function = visible(top.function) if top is not None else ""
        function += "" if function.startswith("<") else "()"
        where = f"in {function} at {visible(top.filename)}:{top.lineno}" if top is not None else "(no Python frames)"
        name = f" {visible(stack.name)}" if stack.name else ""
        print(f"  thread {stack.native_id}{name}{' (main)' if stack.is_main else ''}: {where}", file=sys.stderr)
    print(f"  the whole stacks: periscope stack {pid}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``periscope`` and ``python -m explorer``; returns the exit status."""
    if argv is not None:
        return _main(list(argv))
    try:
        return _main(sys.argv[1:])
    finally:
        # The process ends right after this, with everything closed and removed: without this,
        # its exit would walk every object once more looking for garbage cycles (a tenth of a
        # one-shot command). Not when a caller passes argv (tests call main() in their process).
        import gc

        gc.freeze()


def _main(argv: list[str]) -> int:
    args = None
    commands = command_summaries()
    from explorer import signals

    signals.install()  # SIGTERM and SIGHUP withdraw what Ctrl+C withdraws
    remote = any(arg.startswith(("--host", "--exec", "--hosts-file")) for arg in argv)
    try:
        if remote:
            return _main_remote(argv, commands)
        if argv and argv[0] in commands:
            module = _import_command(commands[argv[0]][0])
            parse_quick = getattr(module, "parse_quick", None)
            args = parse_quick(argv[1:]) if parse_quick is not None else None
            if args is None:
                args = build_parser(commands, with_options=argv[:1]).parse_args(argv)
            return int(args.run(args) or 0)
        if any(a in ("-h", "--help", "--version") for a in argv[:2]):
            # Options that print and exit before any command is looked at (also ``periscope PID --help``).
            build_parser(commands, with_options=(), tui_arguments=True).parse_args([a for a in argv if a in ("-h", "--help", "--version")][:1])
            return 0
        if argv and not argv[0].startswith("-") and not argv[0].isdigit():
            from explorer.text import visible

            guess = suggest_command(argv[0], commands)
            hint = f"did you mean 'periscope {guess}'?" if guess else "run 'periscope --help' for the commands"
            return _usage_error(f"unknown command '{visible(argv[0])}': {hint}")
        app_args, unknown = build_app_parser().parse_known_args(argv)
        if unknown:
            build_parser(commands).parse_args(argv)  # prints the usage error and exits 2
        from explorer.commands.app import run_app

        return run_app(pid=app_args.pid, demo=app_args.demo)
    except PeriscopeError as error:
        from explorer.text import visible

        fix = f"; {visible(error.fix)}" if error.fix else ""
        print(f"periscope: {visible(error.reason)}{fix}", file=sys.stderr)
        if getattr(error, "no_thread_ran", False) and isinstance(getattr(args, "pid", None), int):
            print_where_blocked(args.pid)
        return 1
    except MemoryFault as error:
        # The target changed under a read that was not retried (threads exiting, memory freed).
        print(f"periscope: the target changed while periscope read it ({error.strerror}): try again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return signals.exit_status()
    except BrokenPipeError:
        return 0


def _main_remote(argv: list[str], commands: dict[str, tuple[str, str]]) -> int:
    """``periscope [COMMAND] ... --host H | --exec CMD | --hosts-file F``: the same, on the far side(s)."""
    from explorer import hosts

    argv, endpoints = hosts.take_host_options(argv)
    hosts.use(endpoints)
    try:
        if argv and argv[0] in commands:
            if argv[0] in hosts.RELAYED or argv[0] in hosts.STREAMED:
                args = build_parser(commands, with_options=argv[:1]).parse_args(argv)
                return int(args.run(args) or 0)
            args = build_parser(commands, with_options=argv[:1]).parse_args(argv)  # usage errors are found here
            return hosts.run_command(argv[0], argv[1:], args)
        app_args = build_app_parser().parse_args(argv)
        from explorer.commands.app import host_app_options, run_app

        return run_app(pid=app_args.pid, demo=False, **host_app_options())
    finally:
        hosts.close_all()
