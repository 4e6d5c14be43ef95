"""Shared fixtures: real target processes that are always stopped, and the target interpreter."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests import targets


@pytest.fixture(scope="session")
def target_python() -> str:
    """Path of the CPython 3.14 interpreter targets run under."""
    return targets.target_python()


@pytest.fixture
def spawn() -> Iterator[Callable[..., targets.Target]]:
    """Start target processes (see ``tests.targets.spawn``); all are stopped after the test."""
    started: list[targets.Target] = []

    def start(*args, **kwargs) -> targets.Target:
        target = targets.spawn(*args, **kwargs)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()
