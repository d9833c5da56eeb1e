"""How the API answers requests it cannot serve, so that every status it gives is one its
OpenAPI document lists: 413 for a body over the limit (:class:`BodyLimitMiddleware`), 422
for a body that is not valid JSON or not a valid request (one error shape, inputs not
echoed), 500 without details (logged).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes, before they are buffered: at once by
    Content-Length, else counted as the chunks arrive (chunked uploads). On overflow the 413
    is sent, the app is told the client left, and whatever it answers after is dropped."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large()(scope, receive, send)
                return
        received = 0
        rejected = False

        async def counted() -> dict[str, Any]:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                rejected = True
                await self._too_large()(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_rejected(message: dict[str, Any]) -> None:
            if not rejected:
                await send(message)

        await self.app(scope, counted, unless_rejected)


def _plain(value: Any) -> int | str | bool:
    """A JSON-safe copy of a validation error's constraint value."""
    return value if isinstance(value, int | str | bool) else str(value)


def install_error_handlers(app: FastAPI) -> None:
    """422 for invalid requests and undecodable bodies, 500 for anything unexpected."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each invalid input back: a 20,000-item list would come
        # back whole, and a NaN or 1e400 in the body (Python's json accepts both) made the
        # error response itself unserialisable, a 500. Type, location, message and the
        # constraint (as plain values) say enough.
        errors = [
            {
                "type": str(e.get("type")),
                "loc": [p if isinstance(p, int | str) else str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg")),
                **({"ctx": {k: _plain(v) for k, v in e["ctx"].items()}} if e.get("ctx") else {}),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI turns a JSON syntax error into a 422 (json_invalid) but any other failure
        # to decode a JSON body into a bare 400: bytes that are not UTF-8, nesting deeper
        # than the parser's recursion limit. Both are malformed JSON too, and get the same
        # 422. The routes raise no 400 of their own, so a 400 is always this one.
        if exc.status_code == 400 and exc.__cause__ is not None:
            cause = exc.__cause__
            error = {"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error",
                     "ctx": {"error": f"{type(cause).__name__}: {cause}"[:200]}}  # fmt: skip
            return JSONResponse({"detail": [error]}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)
