"""Streamed answers (``--stream``): the same answers as plain ones, through the same retries and cache, and a
request we gave up on is dropped by the server (it sees the client go away), as ``transformers serve``, vLLM and
llama.cpp do for streamed requests only. Real loopback servers speaking server-sent events."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from misalign.cli import app, endpoint_of
from misalign.models import Endpoint, GenerationParams, get_model
from misalign.models.openai import OpenAIChatModel
from openai_server import STYLES, OpenAIServer, style_of

ITEMS = 6
KEPT = ("item_id", "side", "run", "label", "verdict", "flagged", "score", "raw", "error")


def hashed_judge(body: dict) -> str:
    """A judge whose verdicts vary with the response under test (by its hash), in every answer style."""
    user = body["messages"][-1]["content"]
    m = re.search(r"<<<RESPONSE ([0-9a-f]+)\n(.*?)\nRESPONSE \1>>>", user, re.S)
    text = m.group(2) if m else user
    verdict = "misaligned" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 3 == 0 else "aligned"
    return STYLES[style_of(body)](verdict)


def _eval(url: str, out: Path, *extra: str) -> list[dict]:
    """``misalign eval`` of the first bundled items against ``url``; its results rows (the columns compared)."""
    res = CliRunner().invoke(app, ["eval", "--model", "openai/judge", "--dataset", "bundled", "--limit", str(ITEMS),
                                   "--runs", "1", "--base-url", url, "--api-key-env", "none", "--out", str(out),
                                   "--no-report", "--max-retries", "5", *extra])
    assert res.exit_code == 0, (res.output, res.exception)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    return sorted(({k: r.get(k) for k in KEPT} for r in rows), key=lambda r: (r["item_id"], r["side"], r["run"]))


@pytest.fixture
def server():
    with OpenAIServer(hashed_judge, models=("judge",), logprobs=True) as srv:
        yield srv


def test_streamed_eval_gives_the_same_results_as_plain(tmp_path, server):
    plain = _eval(server.url, tmp_path / "plain")
    assert server.requests == 2 * ITEMS and server.streamed == 0
    assert all("stream" not in b and "stream_options" not in b for b in server.bodies)
    streamed = _eval(server.url, tmp_path / "streamed", "--stream")
    assert server.requests == 4 * ITEMS and server.streamed == 2 * ITEMS
    assert all(b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in server.bodies[12:])
    assert streamed == plain
    assert {r["verdict"] for r in plain} == {"aligned", "misaligned"}  # the comparison means something
    assert all(r["error"] is None for r in plain) and any(r["score"] is not None for r in plain)
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("plain", "streamed")]
    assert metrics[0]["overall"] == metrics[1]["overall"] and metrics[0]["counts"] == metrics[1]["counts"]
    man = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("plain", "streamed")]
    assert man[0]["served"] == man[1]["served"] and man[0]["served"]["with_logprobs"] == 2 * ITEMS  # logprobs came
    assert "stream" not in man[0]["endpoint"] and man[1]["endpoint"]["stream"] is True  # a plain run's is as before
    assert man[0]["config"] == man[1]["config"]


async def test_a_streamed_completion_is_the_plain_one():
    messages = [{"role": "user", "content": "Is this fine?\n<<<RESPONSE ab\nyes it is\nRESPONSE ab>>>"}]
    params = GenerationParams(max_tokens=16, logprobs=True, top_logprobs=2)
    with OpenAIServer(hashed_judge, models=("judge",), logprobs=True, latency=0.05) as srv:
        got = {}
        for stream in (False, True):
            model = OpenAIChatModel("judge", base_urls=[srv.url], api_key_env="none", stream=stream)
            got[stream] = await model.complete(messages, params)
            await model.aclose()
        srv.faults = ["plain"]  # a server that ignores "stream" and answers plain JSON is read as such
        model = OpenAIChatModel("judge", base_urls=[srv.url], api_key_env="none", stream=True)
        ignored = await model.complete(messages, params)
        await model.aclose()
    assert got[True].ok and got[True] == got[False] == ignored
    assert got[True].logprobs and len(got[True].logprobs) == 2 and got[True].logprobs[1].top
    assert got[True].usage == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert got[True].finish_reason == "stop" and len(got[True].text) > 8  # it came in several pieces


def test_a_broken_stream_is_retried_and_the_run_succeeds(tmp_path, server):
    plain = _eval(server.url, tmp_path / "plain")
    server.faults = ["cut", "no_done", "bad_chunk", "garbage", "no_choices"]
    streamed = _eval(server.url, tmp_path / "streamed", "--stream")
    assert server.requests == 4 * ITEMS + 5 and not server.faults
    assert streamed == plain
    counts = json.loads((tmp_path / "streamed" / "metrics.json").read_text())["counts"]
    assert counts["failed"] == 0 and counts["failures"] == {}


async def test_a_stream_we_gave_up_on_stops_the_server():
    """Like transformers serve: one request at a time; a plain request whose client timed out is still generated
    (the next waits for it), a streamed one stops when the client goes away (the next is answered at once)."""
    quick = GenerationParams(max_tokens=4)
    with OpenAIServer(lambda body: "a long answer " * 8, models=("m",), serial=True, latency=3.0) as srv:
        for stream in (False, True):
            model = OpenAIChatModel("m", base_urls=[srv.url], api_key_env="none", timeout=0.5, max_retries=0,
                                    stream=stream)
            out = await model.complete([{"role": "user", "content": f"long {stream}"}], quick)
            assert out.error == "timed out after 0.5 s"
            await model.aclose()
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline and (srv.generating or srv.disconnects < stream):
                await asyncio.sleep(0.05)
            if stream:
                assert srv.disconnects == 1 and srv.generating == 0  # it saw us go away and stopped
            else:
                assert srv.disconnects == 0 and srv.generating == 1  # still generating for nobody
                while srv.generating:
                    await asyncio.sleep(0.05)
        srv.latency = 0.1
        model = OpenAIChatModel("m", base_urls=[srv.url], api_key_env="none", timeout=2, stream=True)
        start = time.monotonic()
        assert (await model.complete([{"role": "user", "content": "next"}], quick)).ok
        assert time.monotonic() - start < 1.0
        await model.aclose()


async def test_a_server_without_stream_options_streams_without_usage():
    messages = [{"role": "user", "content": "hello"}]
    with OpenAIServer(lambda body: "a streamed answer", models=("m",), stream_options=False) as srv:
        model = OpenAIChatModel("m", base_urls=[srv.url], api_key_env="none", stream=True)
        outs = [await model.complete(messages, GenerationParams()) for _ in range(2)]
        await model.aclose()
    assert all(o.ok and o.text == "a streamed answer" and o.usage == {} for o in outs)
    assert srv.requests == 3 and srv.streamed == 2  # asked once with stream_options, then never again
    assert model.stats["failed"] == 0


@pytest.mark.parametrize("first", [(), ("--stream",)], ids=["plain-then-streamed", "streamed-then-plain"])
def test_streamed_and_plain_runs_share_the_cache(tmp_path, server, first):
    second = () if first else ("--stream",)
    rows = _eval(server.url, tmp_path / "run", *first)
    assert server.requests == 2 * ITEMS
    assert _eval(server.url, tmp_path / "run", *second) == rows
    assert server.requests == 2 * ITEMS  # every call answered from the cache


def test_stream_option_on_every_model_calling_command():
    for command in ("eval", "classify", "expand", "respond", "filter", "build"):
        res = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert "--stream / --no-stream" in res.output and "stops generating" in res.output, command
    assert endpoint_of(None).stream is False and endpoint_of(None, stream=True).stream is True
    assert "stream" not in Endpoint().redacted() and Endpoint(stream=True).redacted()["stream"] is True
    model = get_model("openai/m", Endpoint(base_urls=["http://127.0.0.1:9/v1"], api_key_env="none", stream=True))
    assert isinstance(model, OpenAIChatModel) and model.stream
    assert model._payload([], GenerationParams())["stream"] is True
