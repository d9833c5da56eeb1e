"""``python -m serving [--host H] [--port P] [--data-dir DIR] [--workers N]``.

Each worker is a process with its own copy of the served version (model, item vectors,
seen-items map) and its own watcher, since the handlers do CPU work that holds the GIL:
``--workers`` (uvicorn's, sharing one socket) is how a server uses more than one core.
Each worker switches versions atomically on its own; during a promotion two workers can
briefly serve different versions, each response consistent and tagged with its version.
"""

from __future__ import annotations

import argparse
import logging
import os
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
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (default 1)")  # fmt: skip
    parser.add_argument("--log-level", help="uvicorn log level (default info)")
    parser.add_argument("--access-log", action="store_true", default=None,
                        help="log every request (off by default: it costs latency)")  # fmt: skip
    args = parser.parse_args(argv)
    workers = args.workers
    if workers < 1:
        parser.error("--workers must be at least 1")
    del args.workers
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    settings = ServingSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if workers > 1:
        # Worker processes build their app from the environment (uvicorn imports the
        # factory by name in each): hand them the command line's settings that way.
        for name, value in overrides.items():
            os.environ[f"RECSYS_SERVING_{name.upper()}"] = str(value)
        uvicorn.run(
            "serving.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=settings.log_level,
            access_log=settings.access_log,
        )
        return
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
