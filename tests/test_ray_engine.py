"""``--engine ray`` on a real local Ray cluster (2 CPUs): the same bytes as ``--engine local``, and a resume after a
SIGKILL (of the driver, or of a worker) that redoes only unfinished shards and asks no finished shard's call again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from misalign.bench.judge import judge_messages
from misalign.cli import app
from misalign.engines.raydata import ShardStore, shard_of
from openai_server import OpenAIServer, marker_judge

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SHARDS = 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _items(n: int = 40) -> list[dict]:
    rows = []
    for i in range(n):
        doms = [{"safety": ["Privacy violation"]}, {"value": ["Honesty"]}, {"cultural": ["Festivals"]}][i % 3]
        mis = f"bad answer {i} MISALIGNED" if i % 4 else f"subtly bad answer {i}"
        ali = f"good answer {i}" + (" MISALIGNED" if i % 7 == 0 else "")
        rows.append({"id": f"it-{i}", "prompt": f"question {i}", "aligned_response": ali,
                     "misaligned_response": mis, "domains": doms})
    return rows


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _items()))
    return path


def _eval(args: list[str]) -> None:
    res = CliRunner().invoke(app, ["eval", "--no-report", *args])
    assert res.exit_code == 0, (res.output, res.exception)


def _same_files(a: Path, b: Path) -> None:
    for name in ("results.jsonl", "metrics.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _server_args(srv: OpenAIServer) -> list[str]:
    return ["--model", "openai/judge", "--base-url", srv.url, "--api-key-env", "none"]


def test_embedded_judge_same_bytes_as_local(cluster, tmp_path):
    common = ["--dataset", "bundled", "--split", "test", "--limit", "30", "--runs", "2"]
    _eval([*common, "--out", str(tmp_path / "local")])
    _eval([*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", cluster,
           "--ray-shards", str(SHARDS)])
    _same_files(tmp_path / "local", tmp_path / "ray")
    outputs = sorted((tmp_path / "ray" / "shards").glob("eval-*.json"))
    assert len(outputs) == SHARDS
    stamps = [p.stat().st_mtime_ns for p in outputs]
    _eval([*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", cluster,
           "--ray-shards", str(SHARDS)])  # every shard finished: nothing is run again
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    _same_files(tmp_path / "local", tmp_path / "ray")


def test_openai_server_same_bytes_and_calls_as_local(cluster, tmp_path, data):
    with OpenAIServer(marker_judge, logprobs=True) as srv:
        _eval([*_server_args(srv), "--dataset", str(data), "--runs", "2", "--out", str(tmp_path / "local")])
        local_calls = srv.requests
        _eval([*_server_args(srv), "--dataset", str(data), "--runs", "2", "--out", str(tmp_path / "ray"),
               "--engine", "ray", "--ray-address", cluster, "--ray-shards", str(SHARDS), "--ray-workers", "2",
               "--max-concurrency", "4"])
        assert local_calls == 40 * 2 * 2
        assert srv.requests - local_calls == local_calls  # identical pairs still asked once, nothing more
        assert srv.max_in_flight <= 2 * 4
    _same_files(tmp_path / "local", tmp_path / "ray")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["served"] == json.loads((tmp_path / "local" / "manifest.json").read_text())["served"]


def test_workers_whose_first_calls_all_fail_stop_early(cluster, tmp_path, data):
    """As the local engine: a worker whose first 32 calls all failed sends no more, and the run is an error naming
    the cause; a re-run once the server answers asks only what was not answered."""
    with OpenAIServer(marker_judge) as srv:
        srv.faults = ["500"] * 10_000
        ray = ["--engine", "ray", "--ray-address", cluster, "--ray-shards", str(SHARDS), "--ray-workers", "2",
               "--max-concurrency", "4", "--max-retries", "0"]
        args = ["eval", "--no-report", *_server_args(srv), "--dataset", str(data), "--runs", "2", "--out",
                str(tmp_path / "run"), *ray]
        res = CliRunner().invoke(app, args)
        assert res.exit_code != 0
        assert "stopped: the first 32 calls all failed (32 × HTTP 500" in str(res.exception)
        assert srv.requests <= 2 * (32 + 4)  # of 160 calls: each worker's calls in flight finish, no new ones
        assert not (tmp_path / "run" / "metrics.json").exists()
        srv.faults = []
        before = srv.requests
        _eval(args[2:])
        assert srv.requests - before == 40 * 2 * 2  # nothing was answered before, so every call is asked once
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["counts"]["failed"] == 0


def _call(body: dict) -> tuple[str, int]:
    """A chat request as (judged text, seed): the same text is asked once per run, with that run's seed."""
    return body["messages"][-1]["content"], body["seed"]


def _user_texts(pairs: set[tuple[str, str]]) -> set[str]:
    return {judge_messages(p, r)[-1]["content"] for p, r in pairs}


def _finished_pairs(run: Path) -> set[tuple[str, str]]:
    """The (prompt, response) pairs of the shards whose output is written."""
    store = ShardStore(str(run / "shards"))
    items = _items()
    pairs = {(it["prompt"], it[side]) for it in items for side in ("aligned_response", "misaligned_response")}
    done = {s for s in range(SHARDS) if store.read(s) is not None}
    return {pr for pr in pairs if shard_of(*pr, SHARDS) in done}


def _wait_for(cond, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _resume_checks(srv: OpenAIServer, run: Path, reference: Path, rerun: list[str], max_in_flight: int) -> None:
    """After a kill: re-run; no call of a finished shard is asked again, at most the calls that were in flight are,
    and the files equal an uninterrupted run's."""
    time.sleep(1.0)  # calls in flight when the process died reach the server (or not)
    first = [_call(b) for b in srv.bodies]
    finished = _user_texts(_finished_pairs(run))
    assert finished, "no shard had finished before the kill"
    n_first = len(srv.bodies)
    _eval(rerun)
    second = [_call(b) for b in srv.bodies[n_first:]]
    assert not finished & {text for text, _ in second}  # finished shards: no call again
    repeated = set(first) & set(second)
    assert len(repeated) <= max_in_flight  # only calls whose answer never arrived
    assert len(first) + len(second) - len(repeated) == 40 * 2 * 2
    _same_files(reference, run)


def test_driver_killed_mid_run_resumes(cluster, tmp_path, data):
    with OpenAIServer(marker_judge, latency=0.05) as srv:
        args = [*_server_args(srv), "--dataset", str(data), "--runs", "2", "--engine", "ray", "--ray-address",
                cluster, "--ray-shards", str(SHARDS), "--ray-workers", "2", "--max-concurrency", "2"]
        run = tmp_path / "ray"
        proc = subprocess.Popen([sys.executable, "-m", "misalign", "eval", "--no-report", *args, "--out", str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_for(lambda: len(list((run / "shards").glob("eval-*.json"))) >= 2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert len(list((run / "shards").glob("eval-*.json"))) < SHARDS, "the run finished before the kill"
        reference = tmp_path / "local"
        srv.record = False
        _eval([*_server_args(srv), "--dataset", str(data), "--runs", "2", "--out", str(reference)])
        srv.record = True
        _resume_checks(srv, run, reference, [*args, "--out", str(run)], max_in_flight=2 * 2)


def _worker_pids(actor: str = "ShardJudge") -> list[int]:
    """The processes of this machine running the Ray actor class ``actor``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if actor.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_worker_killed_mid_run_is_retried(cluster, tmp_path, data):
    with OpenAIServer(marker_judge, latency=0.05) as srv:
        reference = tmp_path / "local"
        srv.record = False
        _eval([*_server_args(srv), "--dataset", str(data), "--runs", "2", "--out", str(reference)])
        srv.record = True
        run = tmp_path / "ray"
        args = [*_server_args(srv), "--dataset", str(data), "--runs", "2", "--engine", "ray", "--ray-address",
                cluster, "--ray-shards", str(SHARDS), "--ray-workers", "2", "--max-concurrency", "2", "--out",
                str(run)]
        errors: list[BaseException] = []

        def go() -> None:
            try:
                _eval(args)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=go)
        t.start()
        _wait_for(lambda: len(list((run / "shards").glob("eval-*.json"))) >= 1 and _worker_pids())
        killed = _worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        t.join(300)
        assert not errors, errors
        _same_files(reference, run)
        assert len({_call(b) for b in srv.bodies}) == 40 * 2 * 2
        assert len(srv.bodies) <= 40 * 2 * 2 + 2  # only the killed worker's calls in flight asked twice


def _pool(path: Path, n: int = 90) -> Path:
    """Prompts of the bundled data plus near-duplicate copies (a word changed), so dedup drops some."""
    from misalign.io import load_dataset

    prompts = [r.prompt for r in load_dataset("bundled").records[:n]]
    copies = [p.replace(" the ", " a ", 1) for p in prompts[::3]]
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(prompts + copies)))
    return path


def test_build_classify_and_dedup_same_bytes_as_local(cluster, tmp_path):
    pool = _pool(tmp_path / "pool.jsonl")

    def build(out: Path, *extra: str) -> dict[str, bytes]:
        res = CliRunner().invoke(app, ["build", "--input", str(pool), "--out", str(out), *extra])
        assert res.exit_code == 0, (res.output, res.exception)
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "cache.sqlite"}

    local = build(tmp_path / "local")
    ray_args = ("--engine", "ray", "--ray-address", cluster, "--ray-shards", "4")
    on_ray = build(tmp_path / "ray", *ray_args)
    assert set(local) == set(on_ray) and "03_dropped.parquet" in local
    for name in set(local) - {"build_manifest.json"}:
        assert local[name] == on_ray[name], name
    manifests = [json.loads(files["build_manifest.json"]) for files in (local, on_ray)]
    assert [m["config"].pop("out") for m in manifests] == [str(tmp_path / "local"), str(tmp_path / "ray")]
    assert manifests[0] == manifests[1]
    from misalign.io import load_prompts

    dropped, _ = load_prompts(tmp_path / "ray" / "03_dropped.parquet")
    assert len(dropped) >= 10  # the copies were found
    assert len(list((tmp_path / "ray" / "shards").glob("classify-*.json"))) == 4


def test_vllm_judge_builds_a_ray_data_llm_processor(cluster, monkeypatch):
    """ray.data.llm's documented API (vLLMEngineProcessorConfig + build_processor) takes our config; running it
    needs vLLM and a GPU, so only the processor's stages are checked here."""
    pytest.importorskip("ray.data.llm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from misalign.bench.runner import EvalConfig
    from misalign.engines.raydata import RaySettings
    from misalign.engines.vllm_ray import build_judge_processor

    processor = build_judge_processor(EvalConfig(model="vllm/some/model"), RaySettings(tensor_parallel=2))
    assert list(processor.stages) == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]


def test_classify_and_dedup_commands_same_bytes_as_local(cluster, tmp_path):
    pool = _pool(tmp_path / "pool.jsonl", n=30)
    ray_args = ["--engine", "ray", "--ray-address", cluster, "--ray-shards", "3"]
    for engine, extra in (("local", []), ("ray", ray_args)):
        for cmd in (["classify", "-i", str(pool), "-o", str(tmp_path / f"{engine}.parquet")],
                    ["dedup", "-i", str(tmp_path / f"{engine}.parquet"), "-o", str(tmp_path / f"{engine}-kept.jsonl"),
                     "--dropped", str(tmp_path / f"{engine}-dropped.jsonl")]):
            res = CliRunner().invoke(app, [*cmd, *extra])
            assert res.exit_code == 0, (res.output, res.exception)
    for name in ("{}.parquet", "{}-kept.jsonl", "{}-dropped.jsonl"):
        assert (tmp_path / name.format("local")).read_bytes() == (tmp_path / name.format("ray")).read_bytes(), name
    assert (tmp_path / "{}-dropped.jsonl".format("ray")).read_text().count("\n") >= 3
