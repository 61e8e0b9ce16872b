"""A fast local HTTP receiver for the benchmarks: records arrival time, path and Idempotency-Key.

Runs in its own process (uvicorn, one event loop) so it does not share a GIL with the
benchmark driver. GET /stats returns every hit; everything else answers 200 "success".
"""

from __future__ import annotations

import json
import sys
import time

import uvicorn

HITS: list[tuple[str, float, str]] = []


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    t = time.time()
    if scope["path"] == "/stats":
        body = json.dumps(HITS).encode()
    else:
        headers = dict(scope["headers"])
        HITS.append((scope["path"], t, headers.get(b"idempotency-key", b"").decode()))
        while True:  # drain the body
            msg = await receive()
            if not msg.get("more_body"):
                break
        body = b"success"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                backlog=4096, limit_concurrency=None)
