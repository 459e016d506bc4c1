"""Throughput of our OpenAI-compatible client against bare aiohttp and the official openai SDK.

A loopback server (tests/openai_server.py) runs in its own process. For each scenario every client sends the
same requests with the same number in flight; we print requests/s, the share of the ideal rate
(in-flight / latency) and the ratio to bare aiohttp, the floor any client built on it pays.

    python benchmarks/bench_openai_client.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_server.py"), "--port", str(port),
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # "listening on ..."
    return proc, f"http://127.0.0.1:{port}/v1"


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"<<<RESPONSE 0\nanswer number {i}\nRESPONSE 0>>>"}]


async def ours(url: str, n: int, conc: int, cache: bool) -> None:
    from misalign.models import CallCache, GenerationParams, complete_many
    from misalign.models.openai import OpenAIChatModel

    m = OpenAIChatModel("judge", base_urls=[url], api_key_env="none", max_concurrency=conc)
    reqs = [(messages(i), GenerationParams(max_tokens=16), 0) for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        c = CallCache(Path(d) / "c.sqlite") if cache else None
        out = await complete_many(m, reqs, cache=c)
        if c:
            c.close()
    await m.aclose()
    assert all(x.ok for x in out), [x.error for x in out if not x.ok][:3]


async def bare_aiohttp(url: str, n: int, conc: int) -> None:
    import aiohttp

    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc + 8)) as s:
        async def one(i: int) -> None:
            async with sem, s.post(f"{url}/chat/completions",
                                   json={"model": "judge", "messages": messages(i), "max_tokens": 16}) as r:
                body = await r.read()
                assert json.loads(body)["choices"][0]["message"]["content"]

        await asyncio.gather(*(one(i) for i in range(n)))


async def openai_sdk(url: str, n: int, conc: int) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            r = await client.chat.completions.create(model="judge", messages=messages(i), max_tokens=16)
            assert r.choices[0].message.content

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()


def timed(coro) -> float:
    t0 = time.perf_counter()
    asyncio.run(coro)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    args = ap.parse_args()
    k = 0.25 if args.quick else 1.0
    scenarios = [(0.2, 32, int(640 * k)), (0.2, 128, int(2560 * k)), (0.2, 512, int(6000 * k)),
                 (0.0, 256, int(6000 * k))]
    head = ("latency", "in flight", "requests", "client", "req/s", "% ideal", "vs aiohttp")
    print("{:>8} {:>9} {:>8} {:<18} {:>8} {:>8} {:>10}".format(*head))
    for latency, conc, n in scenarios:
        proc, url = start_server(latency)
        try:
            timed(bare_aiohttp(url, min(n, 200), conc))  # warm up the server
            base = n / timed(bare_aiohttp(url, n, conc))
            rows = [("bare aiohttp", base)]
            rows.append(("misalign", n / timed(ours(url, n, conc, cache=False))))
            rows.append(("misalign + cache", n / timed(ours(url, n, conc, cache=True))))
            with contextlib.suppress(ImportError):  # the SDK is a [dev] extra
                rows.append(("openai SDK", n / timed(openai_sdk(url, n, conc))))
            for name, rate in rows:
                ideal = f"{100 * rate / (conc / latency):.0f}%" if latency else "-"
                print(f"{latency:>8.1f} {conc:>9} {n:>8} {name:<18} {rate:>8.0f} {ideal:>8} {rate / base:>10.2f}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
