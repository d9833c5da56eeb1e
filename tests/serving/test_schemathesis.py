"""The API keeps its OpenAPI contract under a property-based fuzzer: schemathesis, with all
its checks, against a live server (``python -m serving`` on a free loopback port, over the
data folder the Dagster graph built).

The checks include: no 5xx; every status code, content type and body documented for the
operation; every schema-valid request accepted (so no rule the schema cannot express, such
as two lists of equal length); every schema-invalid one rejected (so no rule laxer than
the schema); unsupported methods answered 405 with an ``Allow`` header. Schemathesis
generates from ``/openapi.json``: documented examples, boundary values of every constraint
(coverage), then random valid and invalid requests (fuzzing), with a fixed seed.

Run by hand with a larger budget (the README's Serving section has the command and result).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from serving.schemas import Readiness
from tests.serving.conftest import Pipeline, start_server, stop_server

# Per operation; about 750 requests in all, 15-30 s on the 2-core machine.
MAX_EXAMPLES = 150
SEED = 20240501
OPERATIONS = {
    "GET /recommendations/{user_id}",
    "POST /recommendations",
    "GET /candidates/{user_id}",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
}


def test_schemathesis_with_every_check_finds_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    server = start_server(pipeline.data, tmp_path / "server.log")
    report = tmp_path / "junit.xml"
    host, port = server.base
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"http://{host}:{port}/openapi.json",
        "--checks", "all",  # nothing excluded
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--workers", "1",  # the machine's other core runs the server
        "--request-timeout", "30",
        "--generation-database", "none",  # no example database carried between runs
        "--report", "junit", "--report-junit-path", str(report), "--no-color",
    ]  # fmt: skip
    try:
        # In tmp_path: schemathesis and hypothesis write their cache folders in the cwd.
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        stop_server(server)
    output = run.stdout[-8000:] + run.stderr[-2000:]
    assert run.returncode == 0, output
    assert "No issues found" in run.stdout, output
    suite = ET.parse(report).getroot()
    cases = suite.findall(".//testcase")
    # Every operation of the API was generated for, and none failed or errored.
    assert {case.get("name") for case in cases} == OPERATIONS, output
    assert all(len(case) == 0 for case in cases), ET.tostring(suite, encoding="unicode")
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_readiness_bodies_match_their_documented_model(pipeline: Pipeline) -> None:
    """The not-ready /readyz body (a 503, recorded by the fixture before the first
    promotion, which schemathesis never sees) matches the model documented for it."""
    status, body = pipeline.before_promotion["GET /readyz"]
    readiness = Readiness.model_validate(body)  # extra fields are refused
    assert status == 503 and readiness.ready is False and readiness.reason
