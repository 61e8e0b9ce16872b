"""Client-side CPU cost of sending HTTP firings: httpx (client and bare transport) vs aiohttp.

    .venv/bin/python bench/http_clients.py [--n 1000]

Sends N POSTs at concurrency 20 and 100 to bench/receiver.py (its own process) and prints
wall time and this process's CPU time. It is why the node fires with aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

HEADERS = {"Content-Type": "application/json; charset=utf-8"}


async def with_httpx_client(url: str, n: int, c: int) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=c + 10, max_keepalive_connections=c)) as cl:
        sem = asyncio.Semaphore(c)

        async def one(i: int) -> None:
            async with sem:
                await cl.request("POST", url, content=b'{"a":1}', headers={**HEADERS, "Idempotency-Key": str(i)})

        await asyncio.gather(*(one(i) for i in range(n)))


async def with_httpx_transport(url: str, n: int, c: int) -> None:
    tr = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=c + 10, max_keepalive_connections=c))
    sem = asyncio.Semaphore(c)

    async def one(i: int) -> None:
        async with sem:
            r = await tr.handle_async_request(httpx.Request("POST", url, content=b'{"a":1}',
                                                            headers={**HEADERS, "Idempotency-Key": str(i)}))
            await r.aread()
            await r.aclose()

    await asyncio.gather(*(one(i) for i in range(n)))
    await tr.aclose()


async def with_aiohttp(url: str, n: int, c: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        sem = asyncio.Semaphore(c)

        async def one(i: int) -> None:
            async with sem:
                async with s.post(url, data=b'{"a":1}', headers={**HEADERS, "Idempotency-Key": str(i)}) as r:
                    await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    port = 18555
    rx = subprocess.Popen([sys.executable, str(Path(__file__).with_name("receiver.py")), str(port)])
    try:
        await asyncio.sleep(1.5)
        url = f"http://127.0.0.1:{port}/x"
        print(f"| client | concurrency | wall s | client CPU s | CPU ms/request |  (N = {args.n})")
        print("|---|---|---|---|---|")
        for c in (20, 100):
            for name, fn in (("httpx.AsyncClient", with_httpx_client), ("httpx transport", with_httpx_transport),
                             ("aiohttp", with_aiohttp)):
                t, cpu = time.perf_counter(), time.process_time()
                await fn(url, args.n, c)
                wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                print(f"| {name} | {c} | {wall:.2f} | {cpu:.2f} | {cpu / args.n * 1000:.2f} |")
    finally:
        rx.terminate()
        rx.wait()


if __name__ == "__main__":
    asyncio.run(main())
