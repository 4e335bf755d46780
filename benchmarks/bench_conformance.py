"""The conformance matrix: every compression family on every architecture (torchvision, timm, Hugging Face),
each cell checked for output shape, the family's tolerance, the save/load round trip and ONNX export; the table
with every non-pass cell's reason is generated into ``docs/compatibility.md``.

Not a timing benchmark: rows run in parallel, each in its own process (``tests/conformance/matrix.py``) with a
timeout, so a crash or a hang in one model costs only that cell. Environment variables pick a subset:

    CONFORMANCE_ROWS="tv/*,hf/bert"   rows (comma-separated globs; default every row, --quick: the CI subset)
    CONFORMANCE_COLUMNS="static_int8" columns (default every column)
    CONFORMANCE_WORKERS=2             processes at once
    CONFORMANCE_TIMEOUT=900           seconds one row process may run before its current cell counts as hung
    CONFORMANCE_UPDATE=1              merge a subset's cells into the last full results and regenerate the docs

``docs/compatibility.md`` is written by a full run (every row and column) or with CONFORMANCE_UPDATE=1.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MATRIX = ROOT / "tests" / "conformance" / "matrix.py"
DOCS = ROOT / "docs" / "compatibility.md"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(MATRIX.parent))

from _harness import RESULTS, main  # noqa: E402

MARKS = {"pass": "✓", "unsupported": "U", "fail": "F", "crash": "C"}


def _pick(names: list[str], patterns: str | None) -> list[str]:
    if not patterns:
        return names
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    picked = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if not picked:
        raise SystemExit(f"no name matches {globs}; names: {names}")
    return picked


def _run_row(row: str, columns: list[str], timeout: float) -> list[dict[str, Any]]:
    """All of one row's cells, each in order in a fresh process until done; a process that dies or hangs is
    recorded as a crash of the cell it was in, and the row goes on with the next column."""
    cells: list[dict[str, Any]] = []
    todo = list(columns)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    while todo:
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
            start = time.perf_counter()
            cmd = [sys.executable, str(MATRIX), row, *todo, "--out", out.name]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
        if todo and died:
            tail = " | ".join(line for line in log.splitlines()[-3:] if not line.startswith("start "))
            cells.append({"row": row, "column": todo[0], "status": "crash", "phase": "process",
                          "reason": f"{died}" + (f" ({tail[-300:]})" if tail else ""), "frame": "",
                          "metrics": {}, "seconds": {"total": round(time.perf_counter() - start, 1)}})
            todo = todo[1:]
        elif todo:  # exited cleanly without finishing: should not happen; never loop on it
            cells += [{"row": row, "column": c, "status": "crash", "phase": "process", "frame": "", "metrics": {},
                       "reason": "the row's process exited before this cell", "seconds": {}} for c in todo]
            todo = []
    for c in cells:
        print(f"{c['row']:40s} {c['column']:14s} {c['status']:11s} {c['reason'][:120]}", flush=True)
    return cells


def _grid(cells: list[dict[str, Any]], rows: list[str], columns: list[str]) -> tuple[list[list[Any]], dict]:
    by = {(c["row"], c["column"]): c for c in cells}
    table = []
    for r in rows:
        marks = [MARKS[by[(r, col)]["status"]] if (r, col) in by else "" for col in columns]
        table.append([r, sum(m == MARKS["pass"] for m in marks), *marks])
    counts = {s: sum(c["status"] == s for c in cells) for s in MARKS}
    return table, counts


def compatibility_md(cells: list[dict[str, Any]], rows: list[str], columns: list[str], tolerances: dict[str, str],
                     seconds: float) -> str:
    """``docs/compatibility.md``: the grid, the pass rate, the tolerances and every non-pass cell's reason."""
    table, counts = _grid(cells, rows, columns)
    total = len(cells)
    lines = [
        "# Compatibility: every family on every architecture",
        "",
        "Generated by `benchmarks/bench_conformance.py` (`make bench`, or `python benchmarks/run.py conformance`);"
        " do not edit by hand. Each cell builds the model with random weights at a small size (see",
        "`tests/conformance/models.py`), applies the family through the public API and checks: the output keeps its"
        " shape and meets the family's check below; `st.save` then `st.load` into a freshly built original gives",
        "exactly the same outputs; `st.export_onnx(..., check=True)` exports and agrees in ONNX Runtime.",
        "",
        f"**{counts['pass']} of {total} cells pass ({100 * counts['pass'] / max(total, 1):.1f}%)**; "
        f"{counts['unsupported']} unsupported (a clear `UnsupportedModelError`, model left untouched), "
        f"{counts['fail']} fail, {counts['crash']} crash. Full run: {seconds / 60:.0f} min.",
        "",
        "✓ pass, U unsupported, F fail (a typed slimtorch error or a missed check), C crash (any other error).",
        "",
        "| model | pass | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table]
    lines += ["", "## What each column checks", "", "| column | check |", "|---|---|"]
    lines += [f"| {c} | {tolerances.get(c, '')} |" for c in columns]
    lines += ["", "## Cells that do not pass", ""]
    bad = [c for c in cells if c["status"] != "pass"]
    if not bad:
        lines.append("None.")
    for c in sorted(bad, key=lambda c: (c["status"], c["row"], c["column"])):
        where = f" at `{c['frame']}`" if c.get("frame") else ""
        reason = " ".join(c["reason"].split()).replace("|", "/")
        lines.append(f"- **{c['row']} / {c['column']}**: {c['status']} in {c['phase']}{where}: {reason}")
    return "\n".join(lines) + "\n"


def run(quick: bool) -> dict[str, Any]:
    from matrix import CI_ROWS, COLUMNS, ROWS

    all_rows, all_cols = list(ROWS), list(COLUMNS)
    rows = _pick(all_rows, os.environ.get("CONFORMANCE_ROWS") or (",".join(CI_ROWS) if quick else None))
    columns = _pick(all_cols, os.environ.get("CONFORMANCE_COLUMNS"))
    workers = int(os.environ.get("CONFORMANCE_WORKERS", "2"))
    timeout = float(os.environ.get("CONFORMANCE_TIMEOUT", "900"))
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        cells = [c for row_cells in pool.map(lambda r: _run_row(r, columns, timeout), rows) for c in row_cells]
    seconds = time.perf_counter() - start
    full = rows == all_rows and columns == all_cols
    tolerances = {name: col.tolerance for name, col in COLUMNS.items()}
    doc_rows, doc_cols, doc_cells = rows, columns, cells
    if not full and os.environ.get("CONFORMANCE_UPDATE") == "1":
        previous = json.loads((RESULTS / "conformance.json").read_text())["data"]["cells"]
        fresh = {(c["row"], c["column"]) for c in cells}
        doc_cells = [c for c in previous if (c["row"], c["column"]) not in fresh] + cells
        doc_rows, doc_cols, full = all_rows, all_cols, True
        seconds = json.loads((RESULTS / "conformance.json").read_text())["data"]["seconds"]
    if full:
        from slimtorch.io.atomic import write_text

        write_text(DOCS, compatibility_md(doc_cells, doc_rows, doc_cols, tolerances, seconds))
    table, counts = _grid(doc_cells, doc_rows, doc_cols)
    return {
        "title": "Conformance matrix",
        "description": f"{len(doc_rows)} architectures x {len(doc_cols)} families, random weights, small inputs; "
                       "each cell: step, check, save/load round trip, ONNX export with the agreement check "
                       f"({workers} rows at a time, one thread each). ✓ pass, U unsupported, F fail, C crash.",
        "columns": ["model", "pass", *doc_cols],
        "rows": table,
        "notes": [f"{counts['pass']} of {len(doc_cells)} cells pass "
                  f"({100 * counts['pass'] / max(len(doc_cells), 1):.1f}%); {counts['unsupported']} unsupported, "
                  f"{counts['fail']} fail, {counts['crash']} crash",
                  "every non-pass cell with its reason: docs/compatibility.md (full runs)"],
        "data": {"cells": doc_cells, "seconds": seconds},
    }


if __name__ == "__main__":
    main("conformance", run)
