"""Write a :class:`~explorer.profile.Profile` as a file: speedscope, collapsed stacks, or periscope's JSON.

* ``speedscope``: speedscope's own file format (https://www.speedscope.app/file-format-schema.json),
  one *sampled* profile per thread, samples in time order, each weighing the sampling interval in
  seconds. Opens in speedscope.app or ``speedscope FILE``.
* ``collapsed``: one line per distinct stack, ``thread;outermost;...;innermost COUNT``, as
  flamegraph.pl and inferno read it. A frame is ``function (file:line)``; the ``;`` and control
  characters a target may put in its names are written out so that every line parses back.
* ``json``: periscope's own document: the recording's figures, the threads and, per thread, each
  distinct stack (innermost frame first) with its samples. Strings are exact (JSON escapes them).

Only the samples of the recording's mode are written (all of them for *wall*).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from explorer.profile import Profile, ProfileFrame, ThreadMeta, mode_flags
from explorer.text import visible

FORMATS = ("speedscope", "collapsed", "json")
"""The file formats ``periscope record`` writes."""

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


@dataclass(frozen=True)
class Recording:
    """What a file says about how its samples were taken."""

    pid: int
    python: str
    mode: str
    rate: float
    """The rate asked for."""
    achieved_rate: float
    duration: float
    """Seconds sampled."""
    ticks: int
    missed: int
    retries: int
    torn: int
    command: str = ""
    """The target's command line (shown as the profile's name)."""
    exited: bool = False
    """The target exited before the recording was over."""


def format_for(path: str, default: str = "speedscope") -> str:
    """The format a file name suggests (``.txt``/``.collapsed``/``.folded``: collapsed, ``.json``: ``default``)."""
    lower = path.lower()
    if lower.endswith((".collapsed", ".folded", ".txt")):
        return "collapsed"
    return default


def _samples_by_thread(profile: Profile, mode: str) -> dict[int, list[tuple[float, int]]]:
    need = mode_flags(mode)
    threads: dict[int, list[tuple[float, int]]] = {}
    for offset, native_id, stack_id, tags in profile.timeline:
        if tags & need == need:
            threads.setdefault(native_id, []).append((offset, stack_id))
    return threads


def _ordered_threads(profile: Profile, native_ids: Iterable[int]) -> list[ThreadMeta]:
    known = profile.threads
    metas = [known.get(native_id, ThreadMeta(native_id, None, False)) for native_id in native_ids]
    return sorted(metas, key=lambda meta: (not meta.is_main, meta.native_id))


def speedscope_document(profile: Profile, recording: Recording) -> dict[str, Any]:
    """The speedscope file as a JSON-ready dict."""
    frames: list[dict[str, Any]] = []
    frame_index: dict[ProfileFrame, int] = {}
    interval = 1.0 / recording.achieved_rate if recording.achieved_rate > 0 else 1.0 / recording.rate

    def index_of(frame: ProfileFrame) -> int:
        index = frame_index.get(frame)
        if index is None:
            index = frame_index[frame] = len(frames)
            entry: dict[str, Any] = {"name": frame.function, "file": frame.filename}
            if frame.lineno:
                entry["line"] = frame.lineno
            frames.append(entry)
        return index

    stacks_as_indices: dict[int, list[int]] = {}
    profiles = []
    by_thread = _samples_by_thread(profile, recording.mode)
    for meta in _ordered_threads(profile, by_thread):
        samples = []
        weights = []
        for _offset, stack_id in by_thread[meta.native_id]:
            indices = stacks_as_indices.get(stack_id)
            if indices is None:
                # speedscope lists a sample's frames from the root (outermost) to the leaf.
                indices = stacks_as_indices[stack_id] = [index_of(frame) for frame in reversed(profile.stacks[stack_id])]
            samples.append(indices)
            weights.append(interval)
        profiles.append(
            {
                "type": "sampled",
                "name": f"{meta.label} ({meta.native_id})",
                "unit": "seconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        )
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": f"{recording.mode} profile of process {recording.pid}" + (f": {recording.command}" if recording.command else ""),
        "activeProfileIndex": 0,
        "exporter": "periscope",
    }


def _collapsed_name(text: str) -> str:
    """A name as one collapsed-stack field: one line, no ``;`` (written ``\\x3b``)."""
    return visible(text).replace(";", "\\x3b")


def collapsed_frame(frame: ProfileFrame) -> str:
    """One frame of a collapsed stack: ``function (file:line)``."""
    where = f"{frame.filename}:{frame.lineno}" if frame.lineno else frame.filename
    return f"{_collapsed_name(frame.function)} ({_collapsed_name(where)})"


def collapsed_lines(profile: Profile, recording: Recording) -> list[str]:
    """The collapsed stacks, one line each, most samples first."""
    need = mode_flags(recording.mode)
    counts: Counter[tuple[int, int]] = Counter()
    for _offset, native_id, stack_id, tags in profile.timeline:
        if tags & need == need:
            counts[(native_id, stack_id)] += 1
    threads = {meta.native_id: meta for meta in _ordered_threads(profile, {native_id for native_id, _ in counts})}
    lines = []
    for (native_id, stack_id), samples in counts.most_common():
        meta = threads[native_id]
        parts = [_collapsed_name(f"{meta.label} ({native_id})")]
        parts.extend(collapsed_frame(frame) for frame in reversed(profile.stacks[stack_id]))
        lines.append(f"{';'.join(parts)} {samples}")
    return lines


def json_document(profile: Profile, recording: Recording) -> dict[str, Any]:
    """periscope's own JSON document (exact strings)."""
    by_thread = _samples_by_thread(profile, recording.mode)
    threads = []
    for meta in _ordered_threads(profile, by_thread):
        counts = Counter(stack_id for _offset, stack_id in by_thread[meta.native_id])
        threads.append(
            {
                "native_id": meta.native_id,
                "name": meta.name,
                "is_main": meta.is_main,
                "samples": sum(counts.values()),
                "stacks": [
                    {
                        "samples": samples,
                        "frames": [
                            {"function": frame.function, "filename": frame.filename, "lineno": frame.lineno or None}
                            for frame in profile.stacks[stack_id]
                        ],
                    }
                    for stack_id, samples in counts.most_common()
                ],
            }
        )
    return {
        "pid": recording.pid,
        "python": recording.python,
        "mode": recording.mode,
        "rate": recording.rate,
        "achieved_rate": round(recording.achieved_rate, 3),
        "duration": round(recording.duration, 6),
        "ticks": recording.ticks,
        "missed": recording.missed,
        "retries": recording.retries,
        "torn": recording.torn,
        "exited": recording.exited,
        "samples": sum(thread["samples"] for thread in threads),
        "threads": threads,
    }


def write_profile(profile: Profile, recording: Recording, path: str, fmt: str) -> int:
    """Write the file (through a temporary file, then renamed); returns the samples written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        written = _write(profile, recording, tmp, fmt)
        os.replace(tmp, path)
    except BaseException:  # also Ctrl+C while writing: no half-written temporary file is left
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return written


def _write(profile: Profile, recording: Recording, tmp: str, fmt: str) -> int:
    written = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        if fmt == "speedscope":
            document = speedscope_document(profile, recording)
            written = sum(len(p["samples"]) for p in document["profiles"])
            _dump(document, handle)
        elif fmt == "json":
            document = json_document(profile, recording)
            written = document["samples"]
            _dump(document, handle)
        else:
            for line in collapsed_lines(profile, recording):
                handle.write(line + "\n")
                written += int(line.rsplit(" ", 1)[1])
    return written


def _dump(document: dict[str, Any], handle: IO[str]) -> None:
    # ensure_ascii keeps lone surrogates (undecodable file names) valid JSON: they are written \udcxx.
    json.dump(document, handle, ensure_ascii=True, separators=(",", ":"))
    handle.write("\n")
