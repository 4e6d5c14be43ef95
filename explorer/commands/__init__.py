"""One module per ``periscope`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Commands import their heavy dependencies inside ``run`` so that ``periscope --help`` stays fast.
"""

# The order here is the order in ``periscope --help``.
COMMANDS = (
    "ps",
    "stack",
    "tasks",
    "target_python",
    "exec",
    "snapshot",
    "watch",
    "eval",
    "top",
    "record",
    "serve",
)

# Module name -> (NAME, HELP), copied from each module, so that ``periscope --help`` and the choice
# of the command to run import no command module (a test checks that the copies match). A module
# in COMMANDS without an entry here still works: the CLI imports it to learn its NAME and HELP.
SUMMARIES = {
    "ps": ("ps", "list the Python processes on this machine and whether periscope can attach to each"),
    "stack": (
        "stack",
        "print every thread's Python stack of a running CPython 3.14 or 3.15 process (read-only, like py-spy dump)",
    ),
    "tasks": (
        "tasks",
        "print every asyncio task of a running CPython 3.14 or 3.15 process: state, coroutine stack, who awaits it (read-only)",
    ),
    "target_python": (
        "target-python",
        "print the path of a CPython 3.14 or 3.15 interpreter to start targets with (provisions one if needed)",
    ),
    "exec": ("exec", "run a Python file inside a running CPython 3.14 or 3.15 process (remote exec, PEP 768)"),
    "snapshot": (
        "snapshot",
        "attach to a CPython 3.14 or 3.15 process, print one full frame (threads, stacks, locals, module variables), detach",
    ),
    "watch": ("watch", "attach to a CPython 3.14 or 3.15 process and print one JSON line per frame until Ctrl+C (or --count)"),
    "eval": ("eval", "evaluate an expression or statements inside a CPython 3.14 or 3.15 process and print the result's repr"),
    "top": ("top", "a live profile of a CPython 3.14 or 3.15 process in the TUI: where its time goes, sampled from outside"),
    "record": (
        "record",
        "sample a CPython 3.14 or 3.15 process's stacks from outside (it is never stopped) and write a profile: speedscope, collapsed or JSON",
    ),
    "serve": ("serve", "speak periscope's remote protocol on stdin/stdout (what --host and --exec run on the far side)"),
}
