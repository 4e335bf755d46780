"""The package's floors (pyproject.toml's import-linter contract, docs/architecture.md): every import points down."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_import_points_down():
    # in a process of its own: import-linter configures logging, which disables the loggers of this process
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"an import points up a floor or across siblings:\n{run.stdout[-3000:]}{run.stderr}"
