"""Shared fixtures: real target processes that are always stopped, and the target interpreter.

Every test that starts targets (through ``spawn`` or ``target_python``, directly or through
another fixture) runs once per supported CPython minor: both fixtures depend on the
session-scoped, parametrised ``target_minor``, so a new test gets that for free. Its id names the
minor (``test_foo[3.15]``); ``PERISCOPE_TEST_MINORS=3.15`` narrows a run to one minor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from explorer.versions import minor_name
from tests import targets


@pytest.fixture(scope="session", params=targets.test_minors(), ids=minor_name)
def target_minor(request: pytest.FixtureRequest) -> tuple[int, int]:
    """The CPython minor (3, 14) or (3, 15) this test's targets run under."""
    targets.use_minor(request.param)
    return request.param


@pytest.fixture(scope="session")
def target_python(target_minor: tuple[int, int]) -> str:
    """Path of the CPython interpreter (of ``target_minor``) that targets run under."""
    targets.use_minor(target_minor)
    return targets.python_for(target_minor)


@pytest.fixture
def spawn(target_minor: tuple[int, int]) -> Iterator[Callable[..., targets.Target]]:
    """Start target processes (see ``tests.targets.spawn``) under ``target_minor``; all are stopped after the test."""
    targets.use_minor(target_minor)
    started: list[targets.Target] = []

    def start(*args, **kwargs) -> targets.Target:
        target = targets.spawn(*args, **kwargs)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()
