"""``misalign build --engine ray`` with generators and a judge against the loopback OpenAI server, on a real local Ray
cluster (2 CPUs): respond and filter run in Ray Data actors, shard by shard, and every file of the build has the
local engine's bytes; a worker SIGKILLed mid-run is retried and no call answered before the kill is asked again;
the ``respond`` and ``filter`` step commands on Ray write the local commands' bytes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from misalign.cli import app
from openai_server import OpenAIServer
from test_build_e2e import PROMPTS, scripted
from test_ray_engine import _wait_for, _worker_pids, cluster  # noqa: F401  (the 2-CPU cluster fixture)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SHARDS = 4
UPSTREAM = ("01_classified.parquet", "02_expanded.parquet", "03_kept.parquet", "03_dropped.parquet", "steps.json")
"""What classify, expand and dedup leave: copied into a Ray build so it runs only respond and filter on Ray."""


class Recorder:
    """The scripted generators (gen, gen2) and judge, recording when each request was answered."""

    def __init__(self) -> None:
        self.answered: list[tuple[float, str]] = []

    def __call__(self, body: dict) -> str:
        self.answered.append((time.monotonic(), _key(body)))
        return scripted({**body, "model": "gen" if body["model"].startswith("gen") else body["model"]})


def _key(body: dict) -> str:
    return json.dumps(body, sort_keys=True)


@pytest.fixture(scope="module")
def server():
    recorder = Recorder()
    with OpenAIServer(recorder, models=("gen", "gen2", "judge"), latency=0.03) as srv:
        srv.recorder = recorder
        yield srv


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """The e2e prompts (two near-duplicates, one retried and one stubborn prompt) and variants of them."""
    texts = PROMPTS + [f"{p} Please answer for case number {i}." for i, p in enumerate(PROMPTS[:12] * 2)]
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _args(srv: OpenAIServer, pool: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--input", str(pool), "--out", str(out), "--generator", "openai/gen", "--generator",
            "openai/gen2", "--judge", "openai/judge", "--base-url", srv.url, "--api-key-env", "none", "--seed", "3",
            "--max-concurrency", "2", *extra]


def _build(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)


def _ray(cluster_address: str) -> list[str]:
    return ["--engine", "ray", "--ray-address", cluster_address, "--ray-shards", str(SHARDS), "--ray-workers", "2"]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "cache.sqlite"}


def _same_build(local: Path, on_ray: Path) -> None:
    """Every file the same bytes; the manifests differ only in the build directory they name."""
    a, b = _files(local), _files(on_ray)
    assert set(a) == set(b) and {"04_candidates.jsonl", "dataset.jsonl", "filter_report.json"} <= set(a)
    for name in set(a) - {"build_manifest.json"}:
        assert a[name] == b[name], name
    manifests = [json.loads(files["build_manifest.json"]) for files in (a, b)]
    assert [m["config"].pop("out") for m in manifests] == [str(local), str(on_ray)]
    assert manifests[0] == manifests[1]


@pytest.fixture(scope="module")
def local(server, pool, tmp_path_factory) -> dict[str, tuple[Path, Counter[str]]]:
    """Local builds (default and per-generator, the second from the first's deduplicated prompts) and the requests
    each asked."""
    root = tmp_path_factory.mktemp("local")
    out = {}
    for mode, extra in (("default", ()), ("per_generator", ("--per-generator",))):
        if out:
            _seeded(root / "default", root / mode)
        before = len(server.bodies)
        _build(_args(server, pool, root / mode, *extra))
        out[mode] = root / mode, Counter(_key(b) for b in server.bodies[before:])
    return out


def _seeded(reference: Path, out: Path) -> Path:
    """A build directory with the reference's classify, expand and dedup outputs (so those steps are up to date)."""
    out.mkdir()
    for name in UPSTREAM:
        shutil.copy(reference / name, out / name)
    return out


def test_build_on_ray_same_bytes_and_calls_as_local(cluster, server, pool, local, tmp_path):  # noqa: F811
    """Respond and filter on Ray from the local build's deduplicated prompts (classify and dedup on Ray are
    test_ray_engine's), then a re-run that finds every shard finished."""
    ref, asked_locally = local["default"]
    report = json.loads((ref / "filter_report.json").read_text())
    assert report["accepted_after_feedback"] >= 1 and report["dropped"] >= 1  # feedback rounds were exercised
    out = _seeded(ref, tmp_path / "ray")
    before = len(server.bodies)
    _build(_args(server, pool, out, *_ray(cluster)))
    assert Counter(_key(b) for b in server.bodies[before:]) == asked_locally  # every call asked as often as locally
    _same_build(ref, out)
    outputs = sorted((out / "shards").glob("respond-*.json"))
    assert len(outputs) == SHARDS and len(list((out / "shards").glob("respond-cache-*.sqlite"))) == SHARDS
    stamps = [p.stat().st_mtime_ns for p in outputs]
    n = len(server.bodies)
    _build(_args(server, pool, out, *_ray(cluster)))  # every shard finished: nothing asked, nothing written
    assert len(server.bodies) == n and [p.stat().st_mtime_ns for p in outputs] == stamps
    _same_build(ref, out)


def test_per_generator_build_on_ray_same_bytes_as_local(cluster, server, pool, local, tmp_path):  # noqa: F811
    ref, asked_locally = local["per_generator"]
    out = _seeded(ref, tmp_path / "ray")
    before = len(server.bodies)
    _build(_args(server, pool, out, "--per-generator", *_ray(cluster)))
    assert Counter(_key(b) for b in server.bodies[before:]) == asked_locally
    _same_build(ref, out)
    items = [json.loads(x) for x in (out / "dataset.jsonl").read_text().splitlines()]
    assert {i["provenance"]["generator"] for i in items} == {"openai/gen", "openai/gen2"}


def test_worker_killed_mid_run_is_retried_and_asks_no_answered_call_again(cluster, server, pool, local,  # noqa: F811
                                                                          tmp_path):
    ref, asked_locally = local["default"]
    out = _seeded(ref, tmp_path / "ray")
    before, answered_before = len(server.bodies), len(server.recorder.answered)
    server.latency = 0.1  # slow enough that the kill lands in the middle of the shards
    errors: list[BaseException] = []

    def go() -> None:
        try:
            _build(_args(server, pool, out, *_ray(cluster)))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=go)
    try:
        t.start()
        _wait_for(lambda: len(list((out / "shards").glob("respond-0*.json"))) >= 1 and _worker_pids("ShardResponder"))
        written = len(list((out / "shards").glob("respond-0*.json")))
        os.kill(_worker_pids("ShardResponder")[0], signal.SIGKILL)
        killed_at = time.monotonic()
        t.join(300)
    finally:
        server.latency = 0.03
    assert not errors, errors
    assert written < SHARDS, "the run finished before the kill"
    _same_build(ref, out)
    asked = Counter(_key(b) for b in server.bodies[before:])
    again = asked - asked_locally
    assert not asked_locally - asked  # every call was asked
    assert sum(again.values()) <= 2  # at most the killed worker's calls in flight (2 a model, one model at a time)
    recent = {key for t_answer, key in server.recorder.answered[answered_before:] if t_answer > killed_at - 1.0}
    assert set(again) <= recent  # a call answered (and cached) before the kill is never asked again


def _step(srv: OpenAIServer, command: str, src: Path, out: Path, *extra: str) -> None:
    args = [command, "-i", str(src), "-o", str(out), "--generator", "openai/gen", "--generator", "openai/gen2",
            "--base-url", srv.url, "--api-key-env", "none", "--seed", "3", "--max-concurrency", "2", *extra]
    _build(args + (["--judge", "openai/judge"] if command == "filter" else []))


def test_respond_and_filter_commands_on_ray_same_bytes_as_local(cluster, server, local, tmp_path):  # noqa: F811
    """`misalign respond` and `misalign filter` with --engine ray: the step commands' files, byte for byte, and
    the calls asked, as the local commands (and as the build's own respond and filter)."""
    kept = local["default"][0] / "03_kept.parquet"
    outs: dict[str, tuple[bytes, bytes, bytes]] = {}
    asked: dict[str, Counter[str]] = {}
    for engine, extra in (("local", ()), ("ray", _ray(cluster))):
        d = tmp_path / engine
        before = len(server.bodies)
        _step(server, "respond", kept, d / "candidates.jsonl", *extra)
        _step(server, "filter", d / "candidates.jsonl", d / "items.jsonl", *extra)
        asked[engine] = Counter(_key(b) for b in server.bodies[before:])
        outs[engine] = tuple((d / n).read_bytes() for n in ("candidates.jsonl", "items.jsonl",
                                                              "items.jsonl.report.json"))
    assert outs["ray"] == outs["local"] and asked["ray"] == asked["local"]
    assert json.loads(outs["local"][2])["accepted_after_feedback"] >= 1  # regeneration rounds ran
    for step in ("candidates", "items"):
        assert len(list((tmp_path / "ray" / f"{step}.jsonl.ray" / "shards").glob("respond-0*.json"))) == SHARDS


# -- expand on Ray: each round's generator calls (and a chat classifier's) in shards, the rounds in the driver --------

FAILING = "Child abuse"
"""The domain whose expansion requests the server fails (HTTP 500; no retries), in every round."""


def expander(body: dict) -> str:
    """The expansion generator (two new prompts a request: one about the domain, written anew each round, and one
    every domain shares), a chat classifier ``cls`` that labels the first kind by the domain it names, and
    ``scripted`` for everything else."""
    content = body["messages"][-1]["content"]
    if body["model"] == "cls":
        m = re.search(r"PROMPT:\nAbout (\w+)/(.*), take \d+\?$", content)
        return json.dumps({m.group(1): {m.group(2): 0.9}} if m else {"value": {"Politeness": 0.9}})
    if "new, varied user prompts" in content:
        dim, name = re.search(r'touch the (\w+) domain "(.*?)" \(', content).groups()
        if name == FAILING:
            raise RuntimeError("scripted failure")
        return json.dumps({"prompts": [f"About {dim}/{name}, take {body['seed']}?", "Share a banana bread recipe."]})
    return scripted(body)


@pytest.fixture(scope="module")
def expand_server():
    with OpenAIServer(expander, models=("gen", "cls"), latency=0.01) as srv:
        yield srv


def _expand_config(srv: OpenAIServer, path: Path) -> Path:
    """A build that expands (every domain below 2 prompts, two rounds within the budget) and stops at dedup."""
    path.write_text(f'expander = "openai/gen"\ntarget_per_domain = 2\nmax_new = 100\nseed = 3\nmax_retries = 0\n'
                    f'max_concurrency = 2\napi_key_env = "none"\nbase_urls = ["{srv.url}"]\n')
    return path


def _asked(srv: OpenAIServer, before: int) -> Counter[str]:
    return Counter(_key(b) for b in srv.bodies[before:])


def _failed_asks(asked: Counter[str]) -> Counter[str]:
    return Counter({k: n for k, n in asked.items() if f'domain \\"{FAILING}\\"' in k})


def test_build_expansion_on_ray_same_bytes_and_calls_as_local(cluster, expand_server, pool, tmp_path):  # noqa: F811
    """A build with expansion on --engine local and --engine ray: every file the same bytes, the same requests; a
    re-run of expand asks only the failed calls again (their shards are not finished), as a local one would."""
    config = _expand_config(expand_server, tmp_path / "build.toml")
    asked: dict[str, Counter[str]] = {}
    for engine, extra in (("local", ()), ("ray", _ray(cluster))):
        if engine == "ray":  # classify up to date (on Ray it is test_ray_engine's): expand and dedup run on Ray
            (tmp_path / "ray").mkdir()
            for name in ("01_classified.parquet", "steps.json"):
                shutil.copy(tmp_path / "local" / name, tmp_path / "ray" / name)
        before = len(expand_server.bodies)
        _build(["build", "--config", str(config), "--input", str(pool), "--out", str(tmp_path / engine), *extra])
        asked[engine] = _asked(expand_server, before)
    assert asked["ray"] == asked["local"]
    local, on_ray = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert set(local) == set(on_ray) and {"02_expanded.parquet", "expand_report.json"} <= set(local)
    for name in set(local) - {"build_manifest.json"}:
        assert local[name] == on_ray[name], name
    manifests = [json.loads(files["build_manifest.json"]) for files in (local, on_ray)]
    assert [m["config"].pop("out") for m in manifests] == [str(tmp_path / "local"), str(tmp_path / "ray")]
    assert manifests[0] == manifests[1]
    report, failed = json.loads(local["expand_report.json"]), _failed_asks(asked["local"])
    assert report["calls_failed"] == sum(failed.values()) == len(failed) >= 2  # one failed request a round, asked once
    assert 10 <= sum(report["kept"].values()) < sum(report["generated"].values()) <= 100
    shards = tmp_path / "ray" / "shards"
    rounds = {p.name.rsplit("-", 1)[0] for p in shards.glob("expand-r*.json")}
    assert rounds == {f"expand-r{r}" for r in range(len(failed))}
    assert len(list(shards.glob("expand-cache-*.sqlite"))) == SHARDS

    (tmp_path / "ray" / "02_expanded.parquet").unlink()  # expand runs again: only the failed calls are asked
    outputs = {p: p.stat().st_mtime_ns for p in shards.glob("expand-r*.json")}
    before = len(expand_server.bodies)
    _build(["build", "--config", str(config), "--input", str(pool), "--out", str(tmp_path / "ray"), *_ray(cluster)])
    again = _asked(expand_server, before)
    assert again == failed
    rewritten = {p for p, t in outputs.items() if p.stat().st_mtime_ns != t}
    assert len(rewritten) == len(failed)  # the failed call's shard in each round; the finished shards were read
    assert _files(tmp_path / "ray") == on_ray
    before = len(expand_server.bodies)
    _build(["build", "--config", str(config), "--input", str(pool), "--out", str(tmp_path / "ray"), *_ray(cluster)])
    assert len(expand_server.bodies) == before and _files(tmp_path / "ray") == on_ray  # finished: nothing asked


def test_expand_command_on_ray_same_bytes_and_calls_as_local(cluster, expand_server, pool, tmp_path):  # noqa: F811
    """`misalign expand --engine ray` with a chat classifier (its calls in Ray shards too): the local command's
    files and calls; run again, each engine asks only the failed calls."""
    classified = tmp_path / "classified.parquet"
    _build(["classify", "-i", str(pool), "-o", str(classified)])
    asked: dict[str, list[Counter[str]]] = {}
    outs: dict[str, tuple[bytes, bytes]] = {}
    for engine, extra in (("local", ()), ("ray", _ray(cluster))):
        out = tmp_path / engine / "expanded.parquet"
        args = ["expand", "-i", str(classified), "-o", str(out), "--generator", "openai/gen", "--classifier",
                "openai/cls", "--target-per-domain", "2", "--max-new", "100", "--seed", "3", "--base-url",
                expand_server.url, "--api-key-env", "none", "--max-retries", "0", "--max-concurrency", "2", *extra]
        for _ in range(2):
            before = len(expand_server.bodies)
            _build(args)
            asked.setdefault(engine, []).append(_asked(expand_server, before))
        outs[engine] = out.read_bytes(), out.with_name(out.name + ".report.json").read_bytes()
    assert outs["ray"] == outs["local"] and asked["ray"] == asked["local"]
    failed = _failed_asks(asked["local"][0])
    assert asked["local"][1] == failed and len(failed) >= 2  # the failed call of each round, asked again
    report = json.loads(outs["local"][1])
    assert report["calls_failed"] == sum(failed.values()) and sum(report["kept"].values()) >= 10
    shards = tmp_path / "ray" / "expanded.parquet.ray" / "shards"
    assert {p.name.rsplit("-", 1)[0] for p in shards.glob("expand-classify-r*-0*.json")} == {
        "expand-classify-r0", "expand-classify-r1"}
    assert not (tmp_path / "ray" / "expanded.parquet.cache.sqlite").exists()  # every call in a shard's cache
