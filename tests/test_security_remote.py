"""What the far side of ``--host``/``--exec`` sends is hostile input: a lying far side
(tests/hostile_far_side.py) cannot put terminal escapes on this terminal, cannot pass
fields of the wrong type into the model, and cannot make periscope buffer gigabytes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE = Path(__file__).with_name("hostile_far_side.py")


def periscope(mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "PERISCOPE_REMOTE_COMMAND": f"{shlex.quote(sys.executable)} {shlex.quote(str(HOSTILE))} {mode}"}
    return subprocess.run(
        [sys.executable, "-m", "explorer", "--exec", "env", *args],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("args", [("ps",), ("ps", "--json"), ("stack", "4242"), ("eval", "4242", "1")])
def test_escapes_from_the_far_side_are_written_out(args):
    result = periscope("escapes", *args)
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr and "\x07" not in result.stdout + result.stderr
    shown = result.stdout + result.stderr
    assert "\\x1b" in shown or "\\u001b" in shown, shown


def test_fields_of_the_wrong_type_are_refused():
    result = periscope("types", "ps")
    assert result.returncode == 1
    assert "sent a process whose 'pid' is malformed" in result.stderr


def test_a_huge_message_header_is_refused_without_buffering_it():
    result = periscope("huge", "ps")
    assert result.returncode == 1
    assert "sent a message larger than" in result.stderr, result.stderr


@pytest.mark.parametrize("mode", ["profile-skips-stacks", "profile-unknown-stack", "profile-unknown-thread", "profile-line-type",
                                  "profile-deep-stack", "profile-tags", "profile-negative-count", "profile-no-stats"])
def test_a_lying_profile_update_is_refused(mode, monkeypatch):
    """The near side of the profile op checks each update whole before it counts any of it."""
    from explorer.errors import ProtocolError
    from explorer.hosts import Host
    from explorer.remote_profile import RemoteSampler
    from explorer.transport import exec_endpoint

    monkeypatch.setenv("PERISCOPE_REMOTE_COMMAND", f"{shlex.quote(sys.executable)} {shlex.quote(str(HOSTILE))} {mode}")
    host = Host(exec_endpoint("env"))
    try:
        with pytest.raises(ProtocolError, match="the far side's profile|distinct stacks"):
            RemoteSampler(host.link, 4242, rate=100)
    finally:
        host.close()


def test_a_truthful_profile_update_is_counted(monkeypatch):
    """The same far side with a well-formed update: counted (the refusals above are of the lies)."""
    from explorer.hosts import Host
    from explorer.remote_profile import RemoteSampler
    from explorer.transport import exec_endpoint

    monkeypatch.setenv("PERISCOPE_REMOTE_COMMAND", f"{shlex.quote(sys.executable)} {shlex.quote(str(HOSTILE))} profile-good")
    host = Host(exec_endpoint("env"))
    try:
        sampler = RemoteSampler(host.link, 4242, rate=100)
        rows = sampler.profile.counts("cpu", window=10).summary()
        assert [(row.function, row.self_samples) for row in rows] == [("hot", 1)]
        assert sampler.stats().ticks == 1
        sampler.stop()
    finally:
        host.close()


GOOD_STACKS = {
    "threads": [
        {"native_id": 7, "thread_id": 1, "name": None, "holds_gil": False, "is_main": True, "attached": False,
         "frames": [{"filename": "/x.py", "function": "serve", "lineno": 3,
                     "locals": [{"name": "greeting", "type": "str", "repr": "'hello'", "cut": False, "torn": False}]}]}
    ],
    "globals": {"__main__": [{"name": "x", "type": "int", "repr": "1", "cut": False, "torn": False}]},
}


@pytest.mark.parametrize(
    "lie",
    [
        {"threads": "many"},
        {"threads": [{**GOOD_STACKS["threads"][0], "native_id": "7"}]},
        {"threads": [{**GOOD_STACKS["threads"][0], "holds_gil": 1}]},
        {"threads": [{**GOOD_STACKS["threads"][0], "frames": [{"filename": 1, "function": "f", "lineno": 1}]}]},
        {"threads": [{**GOOD_STACKS["threads"][0], "frames": [{"filename": "/x.py", "function": "f", "lineno": 1}] * 5000}]},
        {"threads": [{**GOOD_STACKS["threads"][0], "frames": [{"filename": "/x.py", "function": "f", "lineno": -1}]}]},
        {"threads": [{**GOOD_STACKS["threads"][0], "frames": [{"filename": "/x.py", "function": "f", "lineno": 1, "locals": [{"name": 3}]}]}]},
        {**GOOD_STACKS, "globals": {"__main__": [{"name": "x", "type": "int", "repr": 1}]}},
    ],
)
def test_the_far_sides_stacks_for_the_attach_screen_are_checked(lie):
    """The attach screen's read over a host (serve's stack op): every field checked before it is a model object."""
    from explorer.errors import ProtocolError
    from explorer.remote_outside import outside_from_json

    with pytest.raises(ProtocolError):
        outside_from_json(lie)
    stacks, found, module = outside_from_json(GOOD_STACKS)  # and the truth goes through
    assert stacks[0].frames[0].function == "serve" and not stacks[0].attached
    assert found[7][0][0].value.repr == "'hello'" and module is not None and module[0].name == "x"
