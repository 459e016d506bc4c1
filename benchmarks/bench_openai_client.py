"""Throughput of our OpenAI-compatible client against bare aiohttp and the official openai SDK.

A minimal loopback HTTP server with canned answers runs in its own process. For each scenario every client sends the
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BODY = json.dumps({"id": "x", "object": "chat.completion", "model": "judge", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": '{"verdict": "aligned", "confidence": 0.9}'},
     "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "judge", "object": "model"}]}).encode()


def _response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class FastServer(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server with canned OpenAI answers, so the client is what we measure
    (the aiohttp.web test server in tests/ saturates its core at about 1,100 requests/s)."""

    latency = 0.0

    def connection_made(self, transport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < head_end + 4 + length:
                return
            self.buf = self.buf[head_end + 4 + length:]
            out = _response(MODELS if head.startswith(b"get /v1/models") else BODY)
            if self.latency:
                asyncio.get_running_loop().call_later(self.latency, self._send, out)
            else:
                self.transport.write(out)

    def _send(self, out: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(out)


def serve(port: int, latency: float) -> None:
    async def run() -> None:
        FastServer.latency = latency
        server = await asyncio.get_running_loop().create_server(FastServer, "127.0.0.1", port, backlog=2048)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # optional: a faster loop for the server side only

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
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
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--latency", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.latency)
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
                try:
                    rows.append(("openai SDK", n / timed(openai_sdk(url, n, conc))))
                except Exception as exc:  # it may time out connecting at high concurrency: say so, go on
                    print(f"openai SDK failed at {conc} in flight: {type(exc).__name__}")
            for name, rate in rows:
                ideal = f"{100 * rate / (conc / latency):.0f}%" if latency else "-"
                print(f"{latency:>8.1f} {conc:>9} {n:>8} {name:<18} {rate:>8.0f} {ideal:>8} {rate / base:>10.2f}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
