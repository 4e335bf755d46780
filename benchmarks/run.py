"""Run benchmark scripts one after another (never in parallel: they time things).

    python benchmarks/run.py                 # every benchmarks/bench_*.py
    python benchmarks/run.py measure_latency # only bench_measure_latency.py
    python benchmarks/run.py --quick         # small sizes, for a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import execute  # noqa: E402


def available() -> list[str]:
    """Names of the benchmark scripts (``bench_NAME.py`` -> ``NAME``)."""
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    args = parser.parse_args()
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    for name in names:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"bench_{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        execute(name, module.run, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
