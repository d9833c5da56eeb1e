"""Dependencies that must not change what a user's own command does."""

from __future__ import annotations

import subprocess
import sys


def test_python_c_survives_importing_great_expectations() -> None:
    """pyspark, without its ``connect`` extra, ends a ``python -c`` process with exit code 0
    when Great Expectations imports ``pyspark.sql.connect`` (it takes the run for a doctest):
    the command's remaining lines would silently not run."""
    code = "import great_expectations, pyspark.sql.connect.utils; print('still here')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "still here", done.stderr[-2000:]
