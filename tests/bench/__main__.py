"""Run the benchmarks: ``python -m tests.bench [NAME ...]``.

Without names, runs every ``tests/bench/bench_*.py`` module's ``main()`` in turn (alphabetical);
``python -m tests.bench stack`` runs only ``bench_stack``. A benchmark that fails is reported and
the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback

import tests.bench


def available() -> list[str]:
    """Names of the benchmark modules, ``bench_*``, sorted."""
    return sorted(info.name for info in pkgutil.iter_modules(tests.bench.__path__) if info.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    wanted = list(sys.argv[1:] if argv is None else argv)
    if wanted:
        selected = [n if n.startswith("bench_") else f"bench_{n}" for n in wanted]
        unknown = [n for n in selected if n not in names]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
            return 2
    else:
        selected = names
    failed = []
    for name in selected:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"tests.bench.{name}").main()
        except KeyboardInterrupt:
            raise
        except Exception:  # report it and go on with the other benchmarks
            traceback.print_exc()
            failed.append(name)
        print(f"--- {name}: {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
