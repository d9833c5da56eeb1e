"""``python -m serving [--host H] [--port P] [--data-dir DIR]``: one uvicorn worker.

One worker per process on purpose: each worker loads the model, the item vectors and the
seen-items map, and the handlers do CPU work that holds the GIL; run more processes (behind
a load balancer, or uvicorn ``--workers`` through ``serving.app:create_app`` with
``--factory``) to use more cores.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import uvicorn

from serving.app import create_app
from serving.settings import ServingSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving", description="Serve recommendations over HTTP."
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the pipeline's data folder (default: RECSYS_DATA_DIR or ./data)",
    )
    parser.add_argument("--reload-interval", type=float, dest="reload_interval_seconds",
                        metavar="SECONDS",
                        help="seconds between reads of models/current.json (default 1)")  # fmt: skip
    parser.add_argument("--log-level", help="uvicorn log level (default info)")
    parser.add_argument("--access-log", action="store_true", default=None,
                        help="log every request (off by default: it costs latency)")  # fmt: skip
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    settings = ServingSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
