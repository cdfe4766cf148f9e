"""The gateway's own cost per request, in process: its ASGI app called directly (no sockets, no
cluster), for a well-formed `POST /infer` that the fast lane takes and answers 422 (an unknown
model: every layer a real request passes before the cluster, and its error answer).

    python bench/gateway_asgi.py [--requests 20000] [--repeats 5]

Prints microseconds per request for each repeat. What it compares is the app's layers: run it
from two checkouts (PYTHONPATH=<checkout>/src) to compare two versions on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from kiln.serve._app import create_app

BODY = b'{"texts": ["a text"], "model": "no-such-model"}'
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
         "scheme": "http", "path": "/infer", "raw_path": b"/infer", "query_string": b"",
         "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {},
         "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                     (b"content-length", str(len(BODY)).encode())]}


async def measure(requests: int, repeats: int) -> list[float]:
    app = create_app(None, fallback=False)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(dict(SCOPE), receive, send)
    if sent[0]["status"] != 422:
        raise SystemExit(f"expected the lane's 422, got {sent[0]['status']}: {sent[1]['body']!r}")
    out = []
    for _ in range(repeats):
        sent.clear()
        began = time.perf_counter()
        for _ in range(requests):
            await app(dict(SCOPE), receive, send)
        out.append((time.perf_counter() - began) / requests * 1e6)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    runs = asyncio.run(measure(a.requests, a.repeats))
    print("us per request:", ", ".join(f"{r:.1f}" for r in runs),
          f"(median {sorted(runs)[len(runs) // 2]:.1f})")


if __name__ == "__main__":
    main()
