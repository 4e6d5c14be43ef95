"""Values read from outside (explorer.values, ``periscope stack --locals``) against real targets.

The targets write their own ``repr()`` of each value; what periscope reads from their memory
must be the same text, for every builtin type the reader decodes, within the agent's bounds.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from explorer.remote import RemoteProcess
from explorer.stacks import StackReader
from explorer.values import DEFAULT_LIMITS, ValueReader
from tests import targets
from tests.targets import Target

Spawn = Callable[..., Target]


def periscope(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real command (``python -m explorer``) and capture its output."""
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, timeout=timeout)


def stack_json(pid: int) -> dict[str, Any]:
    result = periscope("stack", "--locals", "--json", str(pid))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def frame_of(document: dict[str, Any], function: str) -> dict[str, Any]:
    """The first frame running ``function`` in any thread of a ``stack --json`` document."""
    for thread in document["threads"]:
        for frame in thread["frames"]:
            if frame["function"] == function:
                return frame
    raise AssertionError(f"no frame of {function} in {json.dumps(document)[:2000]}")


# -- values the target's own repr() must match --------------------------------------------------

# Unassigned code points (Cn) are left out: periscope runs on an older Python than the target and
# formats str with its own Unicode tables, and a character assigned since then is printable in the
# target but escaped by periscope (the one known difference; see README "Values from outside").
_characters = st.characters(exclude_categories=("Cn",)) | st.sampled_from(["\ud800", "\udfff", "\ud83d", "\ude00", "'", '"', "\\"])
_text = st.text(_characters, max_size=12)
_hashable = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | _text
    | st.binary(max_size=12)
)
_scalar = _hashable | st.floats() | st.complex_numbers() | st.binary(max_size=12).map(bytearray)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # At most 4 items (the agent shows 10) and three levels of containers (it shows depth 0-2).
    return (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(_hashable, children, max_size=4)
        | st.sets(_hashable, max_size=4)
        | st.frozensets(_hashable, max_size=4)
    )


_value = _scalar | _containers(_scalar | _containers(_scalar | _containers(_scalar)))

HOLDER = """
import json, pickle, sys, time

def hold({params}):
    print(json.dumps([repr(v) for v in ({params},)]), flush=True)
    time.sleep(600)

with open(sys.argv[1], "rb") as handle:
    values = pickle.load(handle)
hold(*values)
"""


# The target interpreter is the same for every example (a function-scoped fixture where the suite
# runs once per CPython minor).
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
@given(values=st.lists(_value, min_size=1, max_size=6))
@example(values=["\ud83d\ude00", "αβγ", "😀", "é", "\x00\x1b[31m", b"\x00'\"", bytearray(b"\xff"), bytearray(b"'"), -0.0, complex(-0.0, -1.5)])
@example(values=[2**4000 + 7, -(2**100), 0, True, False, None, float("inf"), float("nan"), (1,), (), frozenset(), set()])
@example(values=[{"a": [1, (2, 3)]}, {"b": [frozenset({4})]}, [[[[]]]], {(): {}}, {"k": (1, {2: 3})}])
def test_locals_equal_the_targets_own_repr(values: list[Any], tmp_path_factory: pytest.TempPathFactory, target_python: str) -> None:
    """Hypothesis-generated values, written by the target itself: ``stack --locals --json`` gives its repr()."""
    assume(all(len(repr(value)) <= DEFAULT_LIMITS["repr_chars"] for value in values))
    folder = tmp_path_factory.mktemp("values")
    (folder / "values.pickle").write_bytes(pickle.dumps(values, protocol=4))
    params = ", ".join(f"v{index}" for index in range(len(values)))
    target = targets.spawn(
        HOLDER.format(params=params), args=[str(folder / "values.pickle")], directory=folder, python=target_python
    )
    try:
        expected = json.loads(target.wait_for_line("[", timeout=60))
        frame = frame_of(stack_json(target.pid), "hold")
    finally:
        target.stop()
    got = {local["name"]: local for local in frame["locals"]}
    assert list(got) == [f"v{index}" for index in range(len(values))]
    for index, want in enumerate(expected):
        local = got[f"v{index}"]
        assert local["repr"] == want, (index, values[index])
        assert local["type"] == type(values[index]).__name__
        assert local["argument"] and not local["cut"] and not local["torn"]


def test_reader_limits_are_the_agents() -> None:
    """Outside values are bounded like the agent's previews, so both sources look alike."""
    from payloads.agent import DEFAULT_LIMITS as AGENT_LIMITS

    assert DEFAULT_LIMITS == {key: AGENT_LIMITS[key] for key in DEFAULT_LIMITS}


OBJECTS = """
import sys, threading, time

class Inline:
    def __init__(self):
        self.x = 1
        self.name = "inline"

class Materialised:
    def __init__(self):
        self.items = [1, 2]
        self.more = {"k": None}

class Slotted:
    __slots__ = ("a",)
    def __init__(self):
        self.a = 5

class Sub(list):
    pass

def outer():
    captured = {"shared": 1}
    def hold(arg, *rest, key=None, **extra):
        inline = Inline()
        materialised = Materialised()
        materialised.__dict__  # a real dict now, not inline values
        slotted = Slotted()
        sub = Sub([1])
        sub.tag = "t"
        big = list(range(50))
        deep = [[[[["bottom"]]]]]
        long_text = "x" * 1000
        huge = 10 ** 5000
        own = []
        own.append(own)
        cap = captured
        evil = "\\x1b]52;c;AAAA\\x07\\x1b[2J"
        print(repr([id(inline), id(materialised), id(slotted), id(sub)]), flush=True)
        time.sleep(600)
    hold(1, 2, 3, key="k", other=4)

threading.Thread(target=time.sleep, args=(600,), name="a thread name far longer than fifteen bytes", daemon=True).start()
GLOBAL_LIST = [1, "two"]
_private = 3
outer()
"""


@pytest.fixture
def objects_target(spawn: Spawn, target_python: str) -> tuple[Target, list[int]]:
    target = spawn(OBJECTS, python=target_python)
    ids = json.loads(target.wait_for_line("[", timeout=60))
    return target, ids


def test_other_objects_show_type_address_and_instance_dict(objects_target: tuple[Target, list[int]]) -> None:
    target, (inline, materialised, slotted, sub) = objects_target
    frame = frame_of(stack_json(target.pid), "outer.<locals>.hold")
    got = {local["name"]: local for local in frame["locals"]}
    assert got["inline"]["repr"] == f"<__main__.Inline object at {inline:#x}>" and got["inline"]["address"] == inline
    assert got["inline"]["type"] == "__main__.Inline"
    attrs = {attr["name"]: attr["repr"] for attr in got["inline"]["attrs"]}
    assert attrs == {"x": "1", "name": "'inline'"}
    attrs = {attr["name"]: attr["repr"] for attr in got["materialised"]["attrs"]}
    assert attrs == {"items": "[1, 2]", "more": "{'k': None}"}
    assert got["slotted"]["repr"] == f"<__main__.Slotted object at {slotted:#x}>" and "attrs" not in got["slotted"]
    assert got["sub"]["type"] == "__main__.Sub" and got["sub"]["address"] == sub
    assert {attr["name"]: attr["repr"] for attr in got["sub"]["attrs"]} == {"tag": "'t'"}
    # arguments, *args, keyword-only and **kwargs; cells and free variables by their contents
    arguments = {name for name, local in got.items() if local["argument"]}
    assert arguments == {"arg", "rest", "key", "extra"}
    assert got["rest"]["repr"] == "(2, 3)" and got["extra"]["repr"] == "{'other': 4}"
    assert got["captured"]["repr"] == "{'shared': 1}" and got["cap"]["repr"] == "{'shared': 1}"
    outer = frame_of(stack_json(target.pid), "outer")
    assert {local["name"] for local in outer["locals"]} == {"captured", "hold"}


def test_bounds_are_the_agents_and_marked(objects_target: tuple[Target, list[int]]) -> None:
    target, _ = objects_target
    document = stack_json(target.pid)
    got = {local["name"]: local for local in frame_of(document, "outer.<locals>.hold")["locals"]}
    assert got["big"]["repr"] == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]" and got["big"]["cut"] and got["big"]["len"] == 50
    assert got["deep"]["repr"] == "[[[[...]]]]" and got["deep"]["cut"]
    assert got["long_text"]["repr"] == "'" + "x" * 199 + "\u2026" and got["long_text"]["cut"]
    assert got["long_text"]["len"] == 1000
    assert got["huge"]["repr"] == f"<int with {(10**5000).bit_length()} bits>" and got["huge"]["cut"]
    assert got["own"]["repr"] == "[[...]]" and not got["own"]["cut"]
    # __main__'s variables, dunder names left out (as the agent does)
    main = {variable["name"]: variable for variable in document["globals"]["__main__"]}
    assert main["GLOBAL_LIST"]["repr"] == "[1, 'two']" and main["_private"]["repr"] == "3"
    assert not any(name.startswith("__") and name.endswith("__") for name in main)
    # thread names come whole from the threading module
    names = {thread["name"] for thread in document["threads"]}
    assert {"MainThread", "a thread name far longer than fifteen bytes"} <= names


def test_text_output_is_like_py_spy_and_escapes_control_characters(objects_target: tuple[Target, list[int]]) -> None:
    target, (inline, *_rest) = objects_target
    result = periscope("stack", str(target.pid), "--locals")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    block = result.stdout.split("    outer.<locals>.hold (")[1].split("\n    outer (")[0]
    lines = block.splitlines()
    assert lines[1] == "        Arguments:" and lines[2] == "            arg = 1"
    assert "        Locals:" in lines
    assert f"            inline = <__main__.Inline object at {inline:#x}> with x=1, name='inline'" in lines
    assert "            evil = '\\x1b]52;c;AAAA\\x07\\x1b[2J'" in lines
    assert "Module __main__" in result.stdout and "    GLOBAL_LIST = [1, 'two']" in result.stdout


MUTATOR = """
import threading, time

def mutate():
    shared_list = []
    shared_dict = {}
    shared_set = set()
    n = 0
    print("ready", flush=True)
    while True:
        n += 1
        k = n % 7
        # Every consistent state: all items equal n, as many as n % 7 (or the list refilled).
        shared_list[:] = [n] * k
        shared_dict.clear()
        shared_dict.update({f"k{i}": n for i in range(k)})
        shared_set.clear()
        shared_set.update(range(n, n + k))
        counter = n

mutate()
"""


def _consistent(local: dict[str, Any]) -> bool:
    """Whether one read of the mutator's containers is a state the target really had."""
    text = local["repr"]
    if local["name"] == "shared_list":
        items = [] if text == "[]" else text[1:-1].split(", ")
        return len(set(items)) <= 1 and len(items) < 7
    if local["name"] == "shared_dict":
        values = re.findall(r"'k(\d)': (\d+)", text)
        return text == "{}" or (len({value for _, value in values}) == 1 and [int(key) for key, _ in values] == list(range(len(values))))
    if local["name"] == "shared_set":
        if text == "set()":
            return True
        numbers = sorted(int(item) for item in re.findall(r"\d+", text))
        return bool(numbers) and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    return True


def test_a_target_mutating_its_containers_reads_correct_or_torn(spawn: Spawn, target_python: str) -> None:
    target = spawn(MUTATOR, python=target_python)
    target.wait_for_line("ready", timeout=60)
    reads = torn = 0
    settled: set[str] = set()
    with RemoteProcess.open(target.pid) as process:
        stacks = StackReader(process)
        # n and counter change on every turn of the loop: read until each has once read true
        # (at least 150 reads, at most 2,000: on a loaded machine a read rarely falls between turns).
        for attempt in range(2000):
            if attempt >= 150 and {"n", "k", "counter"} <= settled:
                break
            main = next(stack for stack in stacks.read() if stack.is_main)
            for (address, code), frame in zip(main.frame_refs, main.frames):
                if frame.function != "mutate":
                    continue
                local_variables = ValueReader(process).frame_locals(address, code)
                for local in local_variables or ():
                    reads += 1
                    if local.value.torn:
                        torn += 1
                        assert local.value.repr == "<changed while read>"
                        continue
                    assert _consistent({"name": local.name, "repr": local.value.repr}), local
                    settled.add(local.name)
    assert reads > 100
    # numbers are immutable: they read true while the loop runs (containers may all read torn)
    assert {"n", "k", "counter"} <= settled
    assert target.proc.poll() is None, "the target died"
    # the target keeps going: it is not stopped, and still mutating
    assert "ready" in target.lines


SHARED_MUTATOR = """
import threading, time

def parked(shared_list, shared_dict, shared_set):
    threading.Event().wait()

def mutate():
    shared_list = []
    shared_dict = {}
    shared_set = set()
    for _ in range(3):  # threads whose frames name the very containers the loop changes
        threading.Thread(target=parked, args=(shared_list, shared_dict, shared_set), daemon=True).start()
    n = 0
    print("ready", flush=True)
    while True:
        n += 1
        k = n % 7
        shared_list[:] = [n] * k
        shared_dict.clear()
        shared_dict.update({f"k{i}": n for i in range(k)})
        shared_set.clear()
        shared_set.update(range(n, n + k))
        counter = n
        if n % 200 == 0:
            time.sleep(0.002)  # quiet now and then: some reads fall in a pause

mutate()
"""


def test_every_threads_locals_read_at_once_are_correct_or_torn(spawn: Spawn, target_python: str) -> None:
    """stacks_locals reads every thread in one pass (through the page cache when the target is
    quiet, an object several frames name formatted once): while one thread changes containers
    that three other threads' frames also name, each of them reads as a state the target had or
    as torn, and within one read every thread that names a container shows the same text."""
    target = spawn(SHARED_MUTATOR, python=target_python)
    target.wait_for_line("ready", timeout=60)
    reads = torn = 0
    settled: set[str] = set()
    with RemoteProcess.open(target.pid) as process:
        stacks = StackReader(process)
        for attempt in range(2000):
            if attempt >= 150 and {"n", "counter"} <= settled:
                break
            every_stack = [stack for stack in stacks.read() if stack.frame_refs]
            every_thread = ValueReader(process).stacks_locals([stack.frame_refs for stack in every_stack])
            seen: dict[int, str] = {}
            for stack, per_frame in zip(every_stack, every_thread):
                for frame, found in zip(stack.frames, per_frame):
                    if frame.function not in ("mutate", "parked"):
                        continue
                    for local in found or ():
                        reads += 1
                        if local.value.torn:
                            torn += 1
                            assert local.value.repr == "<changed while read>"
                            continue
                        assert _consistent({"name": local.name, "repr": local.value.repr}), local
                        settled.add(local.name)
                        if local.name.startswith("shared_"):
                            assert seen.setdefault(local.value.address, local.value.repr) == local.value.repr, local
    assert reads > 100
    assert {"n", "counter"} <= settled
    assert target.proc.poll() is None, "the target died"


NEVER_QUIET = """
import threading, time

def parked(items, table, *more):
    threading.Event().wait()

def tick():
    while True:
        time.sleep(0.0002)  # runs Python some 5,000 times a second, and lets the GIL go at once

items = list(range(8))
table = {"a": [1, 2], "b": "text"}
more = [{"n": i, "list": [[j, str(j)] for j in range(10)], "set": set(range(10))} for i in range(30)]  # a read of a few ms
threading.Thread(target=parked, args=(items, table, *more), name="parked", daemon=True).start()
threading.Thread(target=tick, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def test_careful_reads_stop_once_they_took_too_long_to_find_the_target_quiet(spawn: Spawn, target_python: str, monkeypatch) -> None:
    """On a target that runs Python between any two readings, each careful read of a frame's
    containers is in vain: they read torn in the end. The attempts stop at FRAME_ATTEMPTS, or
    sooner once they took RETRY_SECONDS (a long read will not find the target quiet either)."""
    from explorer import values

    target = spawn(NEVER_QUIET, python=target_python)
    target.wait_for_line("ready", timeout=60)
    with RemoteProcess.open(target.pid) as process:
        stack = next(s for s in StackReader(process).read() if s.name == "parked")
        address, code = next((ref for ref, frame in zip(stack.frame_refs, stack.frames) if frame.function == "parked"))

        def reads(budget: float, until: Callable[[int, int], bool]) -> list[tuple[int, int]]:
            """(retries, values read torn) of each read, until ``until`` says so (at most 300 reads)."""
            monkeypatch.setattr(values, "RETRY_SECONDS", budget)
            seen = []
            for _ in range(300):
                reader = ValueReader(process)
                found = reader.frame_locals(address, code)
                assert found is not None and {local.name for local in found} == {"items", "table", "more"}
                seen.append((reader.retries, sum(1 for local in found if local.value.torn)))
                if until(*seen[-1]) and len(seen) >= 30:
                    break
            return seen

        unbounded = reads(1e9, lambda retries, torn: retries >= 2)
        bounded = reads(0.0, lambda retries, torn: torn > 0)
    assert max(retries for retries, _ in unbounded) >= 2  # careful reads in vain, one after another
    assert max(retries for retries, _ in bounded) <= 1  # with no time for them: one, then torn
    assert any(torn for _, torn in bounded)
    assert target.proc.poll() is None


def test_values_of_a_target_in_input(spawn: Spawn, target_python: str) -> None:
    """A thread blocked in input(): its frame's locals are readable from outside."""
    source = textwrap.dedent(
        """
        def ask():
            prompt = "name? "
            answers = {"tries": 3}
            print("ready", flush=True)
            return input(prompt)
        ask()
        """
    )
    target = spawn(source, python=target_python, stdin=subprocess.PIPE)
    target.wait_for_line("ready", timeout=60)
    got = {local["name"]: local["repr"] for local in frame_of(stack_json(target.pid), "ask")["locals"]}
    assert got == {"prompt": "'name? '", "answers": "{'tries': 3}"}


BLOCKED = """
import sys

TOTAL = 3

def wait_here(prompt):
    note = "waiting"
    data = {"a": [1, 2]}
    print("ready", flush=True)
    line = input(prompt)
    print("got", line, flush=True)

wait_here("")
"""


def test_snapshot_of_a_blocked_target_reads_from_outside_and_says_so(spawn: Spawn, target_python: str) -> None:
    """The single thread sits in input(): snapshot reads the values from memory, well within its
    attach timeout, says so, and the target goes on unharmed once it gets its line."""
    target = spawn(BLOCKED, python=target_python, stdin=subprocess.PIPE)
    target.wait_for_line("ready", timeout=60)
    # A 60 s attach timeout that the command does not wait for: it gives up on the agent early.
    done = periscope("snapshot", str(target.pid), "--timeout", "60", timeout=45)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("values read from outside (not live): no thread ran Python within")
    assert "  wait_here (" in done.stdout
    assert "      note = 'waiting'" in lines and "      data = {'a': [1, 2]}" in lines
    assert "  TOTAL = 3" in lines
    done = periscope("snapshot", str(target.pid), "--json", "--timeout", "60", timeout=45)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["source"] == "outside" and "agent could not start" in document["why"]
    frame = frame_of(document, "wait_here")
    assert frame["locals"]["note"] == {"type": "str", "repr": "'waiting'", "source": "outside"}
    assert document["modules"]["__main__"]["TOTAL"] == {"type": "int", "repr": "3", "source": "outside"}
    # The request was withdrawn: the target's input() returns and it goes on as if nobody looked.
    assert target.proc.stdin is not None
    target.proc.stdin.write(b"line\n")
    target.proc.stdin.flush()
    target.wait_for_line("got line", timeout=30)
    assert target.proc.wait(timeout=30) == 0
    assert target.proc.stderr is not None and target.proc.stderr.read() == b""
