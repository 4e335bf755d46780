"""Run rows of the conformance matrix in child processes, so a crash or a hang in one model costs one cell.

Each row runs ``matrix.py ROW COLUMN ...`` in a fresh process (one thread) that appends a JSON line per finished
cell; when the process dies (a segfault in a kernel) or passes its timeout, the cell it was in is recorded as a
crash and the row goes on in a new process with the next column.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MATRIX = Path(__file__).resolve().parent / "matrix.py"
ROOT = MATRIX.parents[2]


def _crash(row: str, column: str, reason: str, seconds: float) -> dict[str, Any]:
    return {"row": row, "column": column, "status": "crash", "phase": "process", "reason": reason, "frame": "",
            "metrics": {}, "seconds": {"total": round(seconds, 1)}}


def run_row(row: str, columns: list[str], timeout: float, *, onnx: list[str] | None = None,
            verbose: bool = False) -> list[dict[str, Any]]:
    """Every cell of ``row`` for ``columns``, as dicts of :class:`matrix.Cell`'s fields, in column order.

    Args:
        row: a name in ``matrix.ROWS``.
        columns: names in ``matrix.COLUMNS``.
        timeout: seconds one child process may run before the cell it is in counts as hung.
        onnx: the columns whose cells export to ONNX (None: all).
        verbose: print one line per cell.
    """
    cells: list[dict[str, Any]] = []
    todo = list(columns)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    while todo:
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
            start = time.perf_counter()
            cmd = [sys.executable, str(MATRIX), row, *todo, "--out", out.name]
            cmd += [] if onnx is None else ["--onnx", *onnx]
            proc = subprocess.Popen(cmd,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, env=env, cwd=ROOT)
            try:
                log, _ = proc.communicate(timeout=timeout)
                died = f"the process died with exit code {proc.returncode}" if proc.returncode else ""
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                log, _ = proc.communicate()
                died = f"hung: the row's process passed its {timeout:.0f} s timeout in this cell"
            done = [json.loads(line) for line in Path(out.name).read_text().splitlines() if line.strip()]
        cells += done
        todo = todo[len(done):]
        if todo:
            tail = " | ".join(line for line in log.splitlines()[-3:] if not line.startswith("start "))
            reason = died or "the row's process exited before this cell"
            cells.append(_crash(row, todo[0], reason + (f" ({tail[-300:]})" if tail else ""),
                                time.perf_counter() - start))
            todo = todo[1:]
    if verbose:
        for c in cells:
            print(f"{c['row']:40s} {c['column']:14s} {c['status']:11s} {c['reason'][:120]}", flush=True)
    return cells


def run_rows(rows: list[str], columns: list[str], *, workers: int = 2, timeout: float = 900,
             verbose: bool = False) -> list[dict[str, Any]]:
    """:func:`run_row` for every row, ``workers`` rows at a time; cells in row order."""
    with ThreadPoolExecutor(workers) as pool:
        per_row = pool.map(lambda r: run_row(r, columns, timeout, verbose=verbose), rows)
        return [c for cells in per_row for c in cells]
