"""The layers point one way (pyproject's [tool.importlinter] contracts), and the server
starts without the model's stack: importing ``serving.app`` imports neither torch nor the
packages above or beside it, nor the offline stack (duckdb, dagster)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `import serving.app` must leave out of sys.modules.
NOT_IN_SERVING = ("torch", "towers", "evaluation", "orchestration", "duckdb", "dagster")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter over this checkout (no module already imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_import_contracts_are_kept():
    done = run_python("from importlinter.cli import lint_imports\n"
                      "raise SystemExit(lint_imports('pyproject.toml', no_cache=True, no_logo=True))")  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and "0 broken" in done.stdout


def test_importing_the_server_leaves_torch_and_the_offline_stack_out():
    done = run_python("import sys, json\nimport serving.app\n"
                      f"print(json.dumps([m for m in {list(NOT_IN_SERVING)!r} if m in sys.modules]))")  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
