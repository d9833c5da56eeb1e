"""Fuzz the serving API with random and malformed requests; count server errors (5xx).

    python benchmarks/fuzz_serving.py --data /tmp/pb/data --requests 10000
    python benchmarks/fuzz_serving.py --url http://127.0.0.1:8000 --requests 10000

Starts ``python -m serving`` on a free loopback port over ``--data`` (or targets a running
server with ``--url``), then sends ``--requests`` requests built from a seeded generator:
random paths (known endpoints, near misses, traversal, unicode, 4 KB paths), methods (the
usual ones and made-up tokens), user ids (known, unknown, 0, negative, int64 bounds, past
int64, non-numeric, unicode, empty), ``k`` (in and out of range, floats, words, repeated),
and bodies (valid, with rated and timed interactions or not, invalid JSON, truncated, wrong
types, bad timestamps, nulls, NaN/Infinity, 1e400, huge ints, huge and deeply nested lists,
random bytes, wrong content types, bodies over the size limit). Prints the status-code histogram and every 5xx or connection failure; exits 1 if
there was any. Traffic goes only to the loopback server it targets, bounded in count.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

ROOT = Path(__file__).resolve().parents[1]
INT64_MAX = 2**63 - 1

Request = tuple[str, str, bytes | None, dict[str, str]]


def _user_id(rng: random.Random, users: list[int]) -> str:
    choice = rng.randrange(14)
    if choice < 4 and users:
        return str(rng.choice(users))
    return rng.choice([
        str(rng.randrange(10**9)), "0", "-1", str(-(2**63)), str(INT64_MAX), str(2**63),
        str(10**30), "abc", "1.5", "1e3", quote("😀"), quote("ユーザー"), "%00", "", " 1",
        "0x10", "+5", "--1", "1" * 400, quote("1;DROP TABLE users"), "null", "%FF%FE",
    ])  # fmt: skip


def _k(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return ""
    value = rng.choice([
        "1", "20", "100", "0", "-1", "101", "1000", str(10**40), "abc", "2.5", "1e2", "",
        "NaN", quote("٣"), "20&k=5", "%20", "true", "[]",
    ])  # fmt: skip
    return f"?k={value}" if rng.random() < 0.9 else f"?kk={value}&k"


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 17, 150, 151, INT64_MAX, 2**63, -(2**64), 10**50])
    if kind == 3:
        return rng.choice([0.5, -3.25, 1e308, 30.0, float("nan"), float("inf")])
    if kind == 4:
        return rng.choice(["", "F", "M", "engineer", "94110", "😀" * 10, "x" * 200, "\x00"])
    if kind == 5:
        return rng.choice([[], [1, 2, 3], list(range(rng.randrange(2000))), ["1"], [None]])
    if kind < 8:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["age", "gender", "occupation", "zip_code", "recent", "k", "user_id", "",
            "item_id", "rating", "timestamp", "recent_item_ids"]  # fmt: skip
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _timestamp(rng: random.Random) -> Any:
    if rng.random() < 0.8:
        offset = rng.choice(["Z", "+00:00", "-07:00", "+05:30", "z"])
        return f"20{rng.randrange(10, 30)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T12:00:00{offset}"
    return rng.choice([None, "2024-05-01T12:00:00", "2024-05-01", "2023-02-29T00:00:00Z",
                       "0000-01-01T00:00:00Z", "2024-05-01T12:00:00+24:00", 1714560000, ""])  # fmt: skip


def _interaction(rng: random.Random, items: list[int]) -> dict[str, Any]:
    """One ``recent`` entry: an item, optionally a rating (sometimes out of range) and time."""
    entry: dict[str, Any] = {"item_id": rng.choice(items) if items else rng.randrange(100)}
    if rng.random() < 0.5:
        entry["rating"] = rng.choice([1, 2.5, 4.0, 5, None, 0, 5.5])
    if rng.random() < 0.5:
        entry["timestamp"] = _timestamp(rng)
    return entry


def _body(rng: random.Random, items: list[int]) -> tuple[bytes, dict[str, str]]:
    json_type = {"content-type": "application/json"}
    choice = rng.randrange(12)
    if choice < 3:  # valid, or nearly
        body: dict[str, Any] = {
            "age": rng.randrange(0, 100),
            "gender": rng.choice(["F", "M", "X"]),
            "occupation": rng.choice(["engineer", "student", "other", ""]),
            "zip_code": str(rng.randrange(100000)),
            "recent": [_interaction(rng, items) for _ in range(rng.randrange(30))],
            "k": rng.randrange(1, 101),
        }
        for key in rng.sample(list(body), rng.randrange(len(body) + 1)):
            del body[key]
        return json.dumps(body).encode(), json_type
    if choice < 6:  # random structure and types (NaN, Infinity and 1e400-sized ints too)
        return json.dumps(_json_value(rng)).encode(), json_type
    if choice == 6:  # broken JSON
        text = json.dumps({"age": 30, "recent": [{"item_id": 1, "rating": 4.0}, {"item_id": 2}]})
        return text[: rng.randrange(len(text))].encode() + rng.choice([b"", b"}", b"\xff", b","]), (
            json_type
        )
    if choice == 7:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200))), json_type
    if choice == 8:  # deep nesting
        depth = rng.choice([100, 1000, 20000])
        return (b'{"recent": ' + b"[" * depth + b"]" * depth + b"}"), json_type
    if choice == 9:  # over the size limit (256 KiB by default), or just under it
        size = rng.choice([250_000, 270_000, 1_000_000])
        return b'{"zip_code": "' + b"9" * size + b'"}', json_type
    if choice == 10:  # literals Python's json accepts and JSON does not
        return rng.choice([b'{"age": NaN}', b'{"k": Infinity}', b'{"age": 1e400}',
                           b'{"recent": [{"item_id": -Infinity}]}', b'{"k": 1' + b"0" * 5000 + b"}",
                           b'{"recent": [{"item_id": 1, "rating": NaN}]}']), (
            json_type
        )  # fmt: skip
    kinds = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
    return b'{"age": 30}', {"content-type": rng.choice(kinds)}


def random_request(rng: random.Random, users: list[int], items: list[int]) -> Request:
    """One request: (method, path with query, body or None, headers)."""
    method = rng.choices(
        ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO", "TRACE"],
        weights=[40, 35, 3, 3, 3, 3, 3, 2, 2],
    )[0]
    kind = rng.randrange(10)
    if kind < 3:
        path = f"/recommendations/{_user_id(rng, users)}{_k(rng)}"
    elif kind < 5:
        path = "/recommendations" + rng.choice(["", "/", "?k=5", "?k=0", "//", "/../candidates/1"])
    elif kind < 7:
        path = f"/candidates/{_user_id(rng, users)}{_k(rng)}"
    elif kind == 7:
        path = rng.choice(["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json",
                           "/redoc", "/docs/oauth2-redirect"])  # fmt: skip
    elif kind == 8:
        path = "/" + "/".join(rng.choice(["a", "..", "%2e%2e", "recommendations", quote("ñ"),
                                          "1", "%00", "x" * 50]) for _ in range(rng.randrange(1, 8)))  # fmt: skip
    else:
        path = "/" + "a" * rng.choice([10, 1000, 4000]) + rng.choice(["", "?" + "k=1&" * 300])
    body, headers = None, {}
    if method in ("POST", "PUT", "PATCH") or rng.random() < 0.05:
        body, headers = _body(rng, items)
    return method, path, body, headers


def send_raw(host: str, port: int, request: Request, timeout: float = 30) -> int:
    """The request written byte for byte on a socket (for request lines http.client refuses
    to send, e.g. a space in the path): the status of the answer, -1 if none."""
    import socket

    method, path, body, headers = request
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + (body or b"")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(data)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return int(answer.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return -1


def send(host: str, port: int, request: Request, timeout: float = 30) -> int:
    """The status code, or -1 when the connection failed (a crash or a hang)."""
    method, path, body, headers = request
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except http.client.InvalidURL:  # refused by the client, not sent: send it raw
        return send_raw(host, port, request, timeout)
    except (OSError, http.client.HTTPException):
        return -1
    finally:
        conn.close()


def fuzz(
    host: str, port: int, n: int, seed: int, users: list[int], items: list[int]
) -> tuple[Counter[int], list[tuple[int, Request]]]:
    """Send ``n`` random requests; returns the status histogram and the failures."""
    rng = random.Random(seed)
    statuses: Counter[int] = Counter()
    failures: list[tuple[int, Request]] = []
    for _ in range(n):
        request = random_request(rng, users, items)
        status = send(host, port, request)
        statuses[status] += 1
        if status >= 500 or status < 0:
            failures.append((status, request))
    return statuses, failures


def _ids(data: Path) -> tuple[list[int], list[int]]:
    import pandas as pd

    users = pd.read_parquet(data / "dataset" / "users.parquet", columns=["user_id"])
    items = pd.read_parquet(data / "dataset" / "items.parquet", columns=["item_id"])
    return users.user_id.tolist(), items.item_id.tolist()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="data folder to serve (starts a server)")
    parser.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.data is None) == (args.url is None):
        parser.error("give --data or --url")
    server = None
    if args.url:
        parsed = urlparse(args.url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        users: list[int] = []
        items: list[int] = list(range(1, 100))
    else:
        host, port = "127.0.0.1", _free_port()
        users, items = _ids(args.data)
        log = open(Path("/tmp") / f"fuzz-serving-{port}.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--data-dir", str(args.data), "--port", str(port),
             "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while send(host, port, ("GET", "/readyz", None, {}), timeout=2) != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not become ready; see {log.name}")
            time.sleep(0.3)
    try:
        started = time.perf_counter()
        statuses, failures = fuzz(host, port, args.requests, args.seed, users, items)
        seconds = time.perf_counter() - started
    finally:
        if server is not None:
            server.terminate()
            server.wait(15)
    print(f"{args.requests} requests in {seconds:.1f} s (seed {args.seed})")
    for status, count in sorted(statuses.items()):
        print(f"  {status if status >= 0 else 'connection failed'}: {count}")
    server_errors = sum(c for s, c in statuses.items() if s >= 500 or s < 0)
    print(f"5xx or connection failures: {server_errors}")
    for status, (method, path, body, headers) in failures[:20]:
        print(f"  {status} {method} {path[:120]} {headers} {(body or b'')[:120]!r}")
    sys.exit(1 if server_errors else 0)


if __name__ == "__main__":
    main()
