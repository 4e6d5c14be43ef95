"""One whole frame of a target read from outside: the agent's picture, when the agent cannot get in.

A process whose threads all sit in C (a long sleep, ``input()``, a lock) never runs the agent's
script. Its stacks (explorer.stacks) and values (explorer.values) can still be read from its
memory: this module puts them into the same model objects the agent's frames decode into
(explorer.model), so that ``periscope snapshot`` and the TUI show them the same way, marked as
read from outside. Nothing runs in the target; it is not stopped.
"""

from __future__ import annotations

import time

from explorer.model import Frame, Hello, ModuleVariables, StackFrame, ThreadInfo, Value, Variable
from explorer.remote import RemoteProcess
from explorer.stacks import StackReader, ThreadStack
from explorer.values import OutsideLocal, OutsideValue, ValueReader

SOURCE = "outside"
"""The ``source`` periscope reports for values read from the target's memory (the agent's: ``agent``)."""


def to_value(value: OutsideValue) -> Value:
    """A value read from outside as the model's preview (``failed`` when it changed while read)."""
    repr_text = value.repr
    if value.attrs:
        repr_text += " with " + ", ".join(f"{name}={attr.repr}" for name, attr in value.attrs)
    return Value(type_name=value.type_name, repr=repr_text, length=value.length, truncated=value.cut, failed=value.torn)


def frame_locals(reader: ValueReader, stack: ThreadStack) -> list[tuple[Variable, ...] | None]:
    """Each frame's locals of one thread, as model variables (None for a frame that changed while read)."""
    return _as_variables(reader.stack_locals(stack.frame_refs))


def _as_variables(per_frame: list[list[OutsideLocal] | None]) -> list[tuple[Variable, ...] | None]:
    return [
        None if local_variables is None else tuple(Variable(local.name, to_value(local.value)) for local in local_variables)
        for local_variables in per_frame
    ]


def read_frame(process: RemoteProcess, modules: tuple[str, ...] = ("__main__",), stacks: StackReader | None = None) -> Frame:
    """Every thread's stack with each frame's locals, and the variables of ``modules``, read from memory."""
    stack_list = (stacks or StackReader(process)).read()
    reader = ValueReader(process)
    threads = []
    # Every thread's locals in one read: checked once, and an object several frames name read once.
    every_thread = reader.stacks_locals([stack.frame_refs for stack in stack_list])
    for stack, found in zip(stack_list, every_thread):
        per_frame = _as_variables(found)
        frames = tuple(
            StackFrame(
                filename=frame.filename,
                function=frame.function.rpartition(".")[2],
                qualname=frame.function,
                lineno=frame.lineno,
                locals=local_variables,
                locals_total=len(local_variables or ()),
            )
            for frame, local_variables in zip(stack.frames, per_frame)
        )
        threads.append(
            ThreadInfo(
                thread_id=stack.thread_id,
                native_id=stack.native_id,
                name=stack.name,
                daemon=None,
                is_main=stack.is_main,
                is_agent=False,
                frames=frames,
                depth=len(frames),
            )
        )
    module_variables = []
    for name in modules:
        found = reader.module_globals(name)
        variables = tuple(Variable(key, to_value(value)) for key, value in found or ())
        module_variables.append(ModuleVariables(name, variables, len(variables), missing=found is None))
    return Frame(
        seq=0,
        time=time.time(),
        agent_cpu=0.0,
        threads=tuple(threads),
        modules=tuple(module_variables),
        truncated=any(stack.truncated for stack in stack_list),
        build_ms=0.0,
        errors=0,
    )


def outside_hello(process: RemoteProcess) -> Hello:
    """A stand-in for the agent's ``hello`` that names the target's version (no agent is there)."""
    parts = tuple(int(part) for part in process.version.split(".") if part.isdigit())
    return Hello(
        protocol=0,
        pid=process.pid,
        python=process.version,
        version=parts,
        implementation="cpython",
        capabilities=(),
        codec="",
        agent_native_id=0,
        rate=0.0,
        modules=(),
    )


__all__ = ["SOURCE", "frame_locals", "outside_hello", "read_frame", "to_value"]
