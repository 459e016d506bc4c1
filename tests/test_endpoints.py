"""Real model servers (issue 13): each model on its own servers, riding out a server restart, and backing off
from a server that answers one request at a time. Loopback servers that behave like ``transformers serve``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from misalign.build.pipeline import BuildConfig
from misalign.cli import endpoint_of
from misalign.errors import ConfigError
from misalign.models import Endpoint, GenerationParams, ModelError, ModelPool, complete_many, get_model
from misalign.models.openai import AdaptiveLimit, OpenAIChatModel
from openai_server import OpenAIServer, marker_judge
from test_failures import _cli

P = GenerationParams(max_tokens=8)


def echo(body: dict) -> str:
    return "echo:" + body["messages"][-1]["content"]


def _requests(n: int, tag: str = "q") -> list:
    return [([{"role": "user", "content": f"{tag}{i}"}], P, 0) for i in range(n)]


# -- row 5: per-model endpoints ------------------------------------------------------------------------------

def test_base_url_items_and_tables_give_each_model_its_servers():
    ep = Endpoint.with_urls(["http://shared/v1?k=v", "gen=http://a/v1", "openai/judge=http://b/v1",
                             "judge=http://c/v1"], timeout=5)
    assert ep.base_urls == ["http://shared/v1?k=v"] and ep.timeout == 5
    assert ep.urls_for("openai/gen") == ["http://a/v1"]
    assert ep.urls_for("openai/judge") == ["http://b/v1", "http://c/v1"]  # both spellings count
    assert ep.urls_for("openai/other") == ["http://shared/v1?k=v"]
    table = Endpoint.with_urls({"gen": "http://a/v1", "openai/judge": ["http://b/v1", "http://c/v1"],
                                "*": "http://shared/v1"})
    assert table.urls_for("openai/judge") == ["http://b/v1", "http://c/v1"]
    assert table.urls_for("openai/x") == ["http://shared/v1"] and table.urls_for("openai/gen") == ["http://a/v1"]
    ep = endpoint_of(["judge=http://u:s3cret@b/v1?key=k2"], connect_wait=7)
    assert ep.connect_wait == 7 and ep.urls_for("openai/judge") == ["http://u:s3cret@b/v1?key=k2"]
    assert "s3cret" not in json.dumps(ep.redacted()) and ep.redacted()["model_urls"] == {"judge": ["http://b/v1"]}
    with pytest.raises(ConfigError, match=r"give URL or MODEL=URL"):
        Endpoint.with_urls(["=http://u:pw@a/v1"])
    with pytest.raises(ConfigError, match="give a URL or a list of URLs"):
        Endpoint.with_urls({"gen": 3})


async def test_each_model_reaches_its_own_server():
    with OpenAIServer(echo, models=("gen",), pinned=True, detail_errors=True) as a, \
            OpenAIServer(marker_judge, models=("judge",), pinned=True, detail_errors=True) as b:
        ep = Endpoint.with_urls([f"gen={a.url}", f"openai/judge={b.url}"], api_key_env="none")
        async with ModelPool(ep) as pool:
            gen, judge = pool.get("openai/gen"), pool.get("openai/judge")
            out = await complete_many(gen, _requests(6)) + await complete_many(judge, _requests(6))
    assert all(c.ok for c in out), [c.error for c in out]
    assert {body["model"] for body in a.bodies} == {"gen"} and {body["model"] for body in b.bodies} == {"judge"}
    assert a.requests == b.requests == 6


async def test_each_model_is_probed_on_its_own_servers():
    with OpenAIServer(echo, models=("gen",), pinned=True, detail_errors=True) as a, \
            OpenAIServer(echo, models=("judge",), pinned=True, detail_errors=True) as b:
        shared = get_model("openai/judge", Endpoint(base_urls=[b.url, a.url], api_key_env="none"))
        try:
            with pytest.raises(ModelError, match=rf"unknown model 'judge' at {a.url}; it serves: gen \(give each "
                                                 r"model its own servers: --base-url MODEL=URL\)"):
                await shared.complete([{"role": "user", "content": "hi"}], P)
        finally:
            await shared.aclose()
        assert a.requests == b.requests == 0
        a.list_models = False  # lists no model (loads on demand): passes the probe; the server's error is shown
        shared = get_model("openai/judge", Endpoint(base_urls=[a.url], api_key_env="none"))
        try:
            c = await shared.complete([{"role": "user", "content": "hi"}], P)
        finally:
            await shared.aclose()
    assert c.error == "HTTP 400: Server is pinned to 'gen'"  # the {"detail": ...} message, not the raw body


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"f{i}", "prompt": f"q{i}", "aligned_response": "fine",
                                        "misaligned_response": "bad MISALIGNED",
                                        "domains": {"safety": ["Privacy violation"]}}) + "\n" for i in range(3)))
    return data


def test_eval_with_a_per_model_base_url(tmp_path: Path, monkeypatch, capsys):
    data = _data(tmp_path)
    with OpenAIServer(echo, models=("gen",), pinned=True) as other, \
            OpenAIServer(marker_judge, models=("judge",), pinned=True, basic_auth=("user", "s3cret")) as srv:
        url = srv.url.replace("http://", "http://user:s3cret@")
        code, _, err = _cli(monkeypatch, capsys, [
            "eval", "--model", "openai/judge", "--dataset", str(data), "--base-url", other.url, "--base-url",
            f"judge={url}", "--api-key-env", "none", "--runs", "1", "--out", str(tmp_path / "run"), "--no-report"])
        assert code == 0, err
        assert srv.requests == 6 and other.requests == 0
        endpoint = json.loads((tmp_path / "run" / "manifest.json").read_text())["endpoint"]
        code, _, err = _cli(monkeypatch, capsys, ["eval", "--model", "openai/judge", "--dataset", str(data),
                                                  "--base-url", "=http://x/v1", "--out", str(tmp_path / "r2")])
    assert "s3cret" not in json.dumps(endpoint) and endpoint["model_urls"] == {"judge": [srv.url]}
    assert endpoint["base_urls"] == [other.url] and endpoint["connect_wait"] == 120
    assert code == 2 and err.strip().startswith("error: base URL '=http://x/v1': give URL or MODEL=URL")


def test_the_recorded_command_line_hides_credentials_of_per_model_urls(tmp_path: Path, monkeypatch, capsys):
    with OpenAIServer(marker_judge, models=("judge",), basic_auth=("user", "s3cret")) as srv:
        url = srv.url.replace("http://", "http://user:s3cret@")
        code, _, err = _cli(monkeypatch, capsys, [
            "eval", "--model", "openai/judge", "--dataset", str(_data(tmp_path)), "--base-url", f"judge={url}",
            "--api-key-env", "none", "--runs", "1", "--out", str(tmp_path / "run"), "--no-report"])
    assert code == 0, err
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "s3cret" not in manifest and f"judge={srv.url}" in manifest
    from misalign.redact import redact_url

    assert redact_url("--base-url=http://u:p@h:1/v1?key=k") == "--base-url=http://h:1/v1"


def test_build_config_takes_a_list_or_a_table_of_base_urls(tmp_path: Path):
    cfg = BuildConfig.model_validate({"input": "p.jsonl", "out": "b", "connect_wait": 9, "base_urls": {
        "gen": "http://user:s3cret@a/v1", "openai/judge": ["http://b/v1"], "*": "http://c/v1"}})
    ep = cfg.endpoint
    assert ep.urls_for("openai/gen") == ["http://user:s3cret@a/v1"] and ep.urls_for("openai/judge") == ["http://b/v1"]
    assert ep.urls_for("openai/cls") == ["http://c/v1"] and ep.connect_wait == 9
    assert cfg.model_dump(mode="json")["base_urls"] == {"gen": "http://a/v1", "openai/judge": ["http://b/v1"],
                                                        "*": "http://c/v1"}
    cfg = BuildConfig.model_validate({"input": "p.jsonl", "out": "b",
                                      "base_urls": ["http://c/v1", "judge=http://u:s3cret@b/v1"]})
    assert cfg.endpoint.urls_for("openai/judge") == ["http://u:s3cret@b/v1"]
    assert cfg.model_dump(mode="json")["base_urls"] == ["http://c/v1", "judge=http://b/v1"]
    toml = tmp_path / "build.toml"
    toml.write_text('input = "p.jsonl"\nout = "b"\n[base_urls]\ngen = "http://a/v1"\njudge = ["http://b/v1"]\n')
    assert BuildConfig.from_file(toml).endpoint.model_urls == {"gen": ["http://a/v1"], "judge": ["http://b/v1"]}
    toml.write_text('input = "p.jsonl"\nout = "b"\nbase_urls = ["=http://b/v1"]\n')
    with pytest.raises(ValueError, match=r"key 'base_urls': .*give URL or MODEL=URL"):
        BuildConfig.from_file(toml)


# -- row 6: a server restart loses no call -------------------------------------------------------------------

async def test_a_server_restart_loses_no_call():
    with OpenAIServer(echo, models=("m",), latency=0.05) as srv:
        # fast back-off for the ordinary retries: before, refused connections used them up in well under 3 s
        m = OpenAIChatModel("m", base_urls=[srv.url], api_key_env="none", max_concurrency=4, backoff_base=0.05)
        try:
            run = asyncio.ensure_future(complete_many(m, _requests(60)))
            while srv.requests < 8:
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            back = srv.outage(3.0)
            out = await run
            took = time.monotonic() - t0
        finally:
            await m.aclose()
        assert back.done()
    assert all(c.ok for c in out), sorted({c.error for c in out if not c.ok})
    assert [c.text for c in out] == [f"echo:q{i}" for i in range(60)] and m.stats["failed"] == 0
    assert 3.0 <= took < 15


async def test_connect_wait_bounds_the_wait_for_a_restart():
    with OpenAIServer(echo, models=("m",)) as srv:
        m = get_model("openai/m", Endpoint(base_urls=[srv.url], api_key_env="none", connect_wait=1.0))
        assert isinstance(m, OpenAIChatModel) and m.connect_wait == 1.0
        try:
            assert (await m.complete([{"role": "user", "content": "hi"}], P)).ok
            back = srv.outage(2.5)
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            c = await m.complete([{"role": "user", "content": "again"}], P)
            took = time.monotonic() - t0
        finally:
            await m.aclose()
        back.result(10)
    assert c.error is not None and c.error.startswith(f"cannot connect to {srv.url}")
    assert 0.9 <= took < 2.5


# -- row 1: a server that answers one request at a time ------------------------------------------------------

async def test_the_in_flight_limit_halves_on_overload_and_grows_back():
    gate = AdaptiveLimit(8)
    for _ in range(3):
        gate.overloaded()
    assert gate.limit == 1
    gate.overloaded()
    assert gate.limit == 1  # never below one
    for expected in (2, 2, 3, 3, 3, 4):
        gate.succeeded()
        assert gate.limit == expected  # one more after a streak as long as the limit
    order: list[int] = []

    async def hold(i: int) -> None:
        async with gate:
            order.append(i)
            await asyncio.sleep(0.01)

    gate.limit = 2
    tasks = [asyncio.ensure_future(hold(i)) for i in range(6)]
    await asyncio.sleep(0)
    assert gate.active == 2 and gate.waiting == 4
    tasks[3].cancel()  # a waiter that gives up takes no place
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 2, 4, 5] and gate.active == 0 and gate.waiting == 0


async def test_a_serial_server_is_not_buried_in_requests():
    """Before: 20 calls at 32 in flight against a server that answers one at a time in 0.3 s, with a 1 s timeout:
    nearly every call timed out six times (the server kept working on the abandoned requests)."""
    with OpenAIServer(echo, models=("m",), latency=0.3, serial=True, detail_errors=True) as srv:
        m = get_model("openai/m", Endpoint(base_urls=[srv.url], api_key_env="none", timeout=1.0))
        seen: set[str] = set()
        t0 = time.monotonic()
        try:
            run = asyncio.ensure_future(complete_many(m, _requests(20)))
            while not run.done():
                seen.add(m.status())  # type: ignore[attr-defined]
                await asyncio.sleep(0.05)
            out = run.result()
        finally:
            await m.aclose()
        took = time.monotonic() - t0
    failed = [c.error for c in out if not c.ok]
    print(f"serial server: {srv.requests} requests, {len(failed)} failed, {took:.1f} s")
    assert not failed, failed
    assert [c.text for c in out] == [f"echo:q{i}" for i in range(20)]
    assert took < 40
    assert srv.in_flight_seen[19] == 20 and max(srv.in_flight_seen[-5:]) <= 6  # the client backed off
    assert any("of 32 in flight" in s for s in seen)
