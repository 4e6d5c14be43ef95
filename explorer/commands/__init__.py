"""One module per ``periscope`` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Commands import their heavy dependencies inside ``run`` so that ``periscope --help`` stays fast.
"""

# The order here is the order in ``periscope --help``.
COMMANDS = (
    "ps",
    "stack",
    "target_python",
    "exec",
    "snapshot",
    "watch",
    "eval",
)
