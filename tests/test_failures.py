"""`misalign eval` when things go wrong: a full disk, two runs into one directory, every call failing, URLs with
credentials, unwritable outputs, broken answers, slow servers and Ctrl-C. Real loopback servers, real processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from misalign.bench import runner
from misalign.cli import main
from misalign.models import CallCache
from misalign.models.openai import OpenAIChatModel
from openai_server import OpenAIServer, marker_judge


def _items(n: int) -> list[dict]:
    return [{"id": f"f{i}", "prompt": f"question {i}", "aligned_response": f"fine {i}",
             "misaligned_response": f"bad {i}" + (" MISALIGNED" if i % 2 else ""),
             "domains": {"safety": ["Privacy violation"]}} for i in range(n)]


def _data(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _items(n)))
    return path


def _cli(monkeypatch, capsys, args: list[str]) -> tuple[int, str, str]:
    """Run ``misalign ARGS`` in this process through the real entry point; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["misalign", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _eval_args(data: Path, url: str, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "openai/judge", "--dataset", str(data), "--base-url", url, "--api-key-env", "none",
            "--runs", "1", "--out", str(out), "--no-report", *extra]


def _one_error_line(err: str) -> str:
    """The one error line (notes about the run, on their own lines, may stand beside it)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- row 1: a full disk loses no paid call ------------------------------------------------------------------

class _FullDisk(CallCache):
    """A call cache on a disk with room for ``budget`` more transactions (then SQLite says it is full)."""

    budget = 0

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        real = self._db

        class Conn:
            def __getattr__(self, name):
                return getattr(real, name)

            def executemany(self, sql, rows):
                if _FullDisk.budget <= 0:
                    raise sqlite3.OperationalError("database or disk is full")
                _FullDisk.budget -= 1
                return real.executemany(sql, rows)

        self._db = Conn()


def test_full_disk_stops_the_run_at_once_and_the_rerun_asks_only_for_what_is_missing(tmp_path, monkeypatch,
                                                                                     capsys):
    data = _data(tmp_path, 30)  # 60 calls
    out = tmp_path / "run"
    with OpenAIServer(marker_judge, models=("judge",), latency=0.01) as srv:
        _FullDisk.budget = 3
        monkeypatch.setattr(runner, "CallCache", _FullDisk)
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, out, "--max-concurrency", "2"))
        line = _one_error_line(err)
        assert code == 2 and "cannot store answers" in line and "database or disk is full" in line
        assert str(out / "cache.sqlite") in line and "re-run the same command" in line
        sent = srv.requests
        kept = sqlite3.connect(out / "cache.sqlite").execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        assert 0 < kept < 60 and sent <= kept + 2 + 2  # nothing new after the first failed write (2 in flight)
        assert not (out / "metrics.json").exists()
        monkeypatch.setattr(runner, "CallCache", CallCache)  # space freed
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, out))
        assert code == 0, err
        assert srv.requests - sent == 60 - kept  # only the missing calls
    assert json.loads((out / "metrics.json").read_text())["counts"]["judged"] == 60


def test_an_unwritable_output_is_one_line_and_keeps_the_answers(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path)
    out = tmp_path / "run"

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        monkeypatch.setattr(runner, "write_rows", full)
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, out))
        assert code == 2 and _one_error_line(err) == f"error: {out / 'results.jsonl'}: No space left on device"
        monkeypatch.undo()
        code, _, _ = _cli(monkeypatch, capsys, _eval_args(data, srv.url, out))
        assert code == 0 and srv.requests == 12  # the answers were kept: the re-run sent nothing


# -- row 2: two runs into one directory ---------------------------------------------------------------------

def _eval_cmd(data: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "misalign", *_eval_args(data, url, out, *extra)]


def test_a_second_run_into_a_busy_directory_is_refused_or_waits(tmp_path):
    data = _data(tmp_path, 30)
    out = tmp_path / "run"
    # 0.1 s a request: the first run stays busy ~6 s, time for the second process to start on a loaded machine
    with OpenAIServer(marker_judge, models=("judge",), latency=0.1) as srv:
        first = subprocess.Popen(_eval_cmd(data, srv.url, out, "--runs", "2", "--max-concurrency", "2"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while srv.requests < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = subprocess.run(_eval_cmd(data, srv.url, out, "--limit", "3"), capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"{out} is in use by another run (pid {first.pid}" in second.stderr and "--wait" in second.stderr
        assert first.wait(120) == 0, first.stderr.read()
        manifest = json.loads((out / "manifest.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        rows = (out / "results.jsonl").read_text().splitlines()
        assert manifest["seeds"] == [0, 1] and metrics["counts"]["runs"] == 2 and len(rows) == 120
        # --wait queues behind the first run; then manifest, results and metrics are all the second run's
        first = subprocess.Popen(_eval_cmd(data, srv.url, out, "--runs", "3", "--max-concurrency", "2"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while srv.requests < 125 and time.monotonic() < deadline + 60:
            time.sleep(0.01)
        second = subprocess.run(_eval_cmd(data, srv.url, out, "--limit", "3", "--wait"), capture_output=True,
                                text=True)
        assert first.wait(120) == 0 and second.returncode == 0, second.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    rows = (out / "results.jsonl").read_text().splitlines()
    assert manifest["seeds"] == [0] and manifest["dataset"]["items"] == 3
    assert metrics["counts"]["items"] == 3 and len(rows) == 6


# -- row 3: everything failed is an error ---------------------------------------------------------------------

def test_a_base_url_without_v1_is_refused_before_any_call(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path)
    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        bare = srv.url.removesuffix("/v1")
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, bare, tmp_path / "run"))
        line = _one_error_line(err)
        assert code == 2 and f"use --base-url {bare}/v1" in line and srv.requests == 0


def test_every_call_failing_is_an_error_naming_the_cause(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path)  # 12 calls
    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        srv.faults = ["429"] * 100
        code, out, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, tmp_path / "run", "--max-retries", "1"))
        line = _one_error_line(err)
        assert code == 2 and "12 of 12 calls failed (12 × HTTP 429: rate limited)" in line
        assert "re-run the same command" in line and srv.requests == 24  # 12 calls x 2 attempts
        assert "failed calls: 12 × HTTP 429" in out  # the table and the breakdown still show
        counts = json.loads((tmp_path / "run" / "metrics.json").read_text())["counts"]
        assert counts["failed"] == 12 and counts["failures"] == {"HTTP 429: rate limited": 12}
        # a threshold the user sets: one failure in twelve is fine by default, not with --max-failed 0
        srv.faults = ["400"]
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, tmp_path / "r2"))
        assert code == 0, err
        srv.faults = ["400"]
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, tmp_path / "r3", "--max-failed", "0"))
        assert code == 2 and "1 of 12 calls failed (1 × HTTP 400" in _one_error_line(err)


def test_a_run_whose_first_calls_all_fail_stops_early(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path, 50)  # 100 calls
    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        srv.faults = ["500"] * 1000
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, tmp_path / "run", "--max-retries", "0",
                                                            "--max-concurrency", "4"))
        line = _one_error_line(err)
        assert code == 2 and "stopped: the first 32 calls all failed (32 × HTTP 500: server exploded)" in line
        assert srv.requests <= 32 + 4  # the calls in flight finish; nothing new is sent
    assert not (tmp_path / "run" / "metrics.json").exists()


# -- rows 4 and 5: credentials in the base URL ---------------------------------------------------------------

def test_basic_auth_and_query_parameters_in_the_base_url(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path)
    out = tmp_path / "run"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIServer(marker_judge, models=("judge",), basic_auth=("user", "p4ss:SECRET"),
                      query={"key": "SECRET-Q"}) as srv:
        url = f"http://user:p4ss%3ASECRET@127.0.0.1:{srv.port}/v1?key=SECRET-Q"
        code, stdout, err = _cli(monkeypatch, capsys, _eval_args(data, url, out))
        assert code == 0, err
        assert srv.requests == 12 and json.loads((out / "metrics.json").read_text())["counts"]["failed"] == 0
    for f in out.iterdir():
        assert b"SECRET" not in f.read_bytes(), f
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"http://127.0.0.1:{srv.port}/v1" in manifest["command"] and "SECRET" not in stdout + err
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")  # a key and URL credentials together: say which to drop
    code, _, err = _cli(monkeypatch, capsys, _eval_args(data, url, tmp_path / "r2", "--api-key-env",
                                                        "OPENAI_API_KEY"))
    assert code == 2 and "carries user:password" in _one_error_line(err) and "SECRET" not in err


# -- row 8: OS errors and missing templates are one line -------------------------------------------------------

def test_os_errors_and_a_missing_template_are_one_line(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = _cli(monkeypatch, capsys, ["data", "export", str(data), "--out", str(blocker / "x.jsonl")])
    assert code == 2 and str(blocker) in _one_error_line(err)
    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, tmp_path / "run", "--template", "nosuch"))
        assert code == 2 and "no template 'nosuch'" in _one_error_line(err) and srv.requests == 0
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, blocker / "run"))
        assert code == 2 and str(blocker) in _one_error_line(err)
    code, _, err = _cli(monkeypatch, capsys, ["report", str(tmp_path / "no-such-dir")])
    assert code == 2 and "not a run directory" in _one_error_line(err)


# -- row 14: timeouts and retries are options, and the wait is shown -------------------------------------------

def test_timeout_and_retries_are_options(tmp_path, monkeypatch, capsys):
    data = _data(tmp_path, 1)  # 2 calls
    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        srv.faults = ["slow", "slow"]  # 5 s each
        t = time.monotonic()
        code, _, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, tmp_path / "run", "--timeout", "0.3",
                                                            "--max-retries", "0"))
        assert time.monotonic() - t < 4.5
        assert code == 2 and "2 of 2 calls failed (2 × timed out after 0.3 s)" in _one_error_line(err)


async def test_the_client_says_what_it_waits_on():
    import asyncio

    from misalign.models import GenerationParams

    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        srv.faults, srv.retry_after = ["429"], "1"
        m = OpenAIChatModel("judge", base_urls=[srv.url], api_key_env="none")
        try:
            call = asyncio.ensure_future(m.complete([{"role": "user", "content": "hi"}], GenerationParams()))
            seen = ""
            for _ in range(100):
                await asyncio.sleep(0.02)
                seen = seen or m.status()
            assert (await call).ok
        finally:
            await m.aclose()
    assert seen == "1 retrying (HTTP 429: rate limited)" and m.status() == ""


# -- row 18: Ctrl-C says how to resume ------------------------------------------------------------------------

def test_ctrl_c_says_how_to_resume(tmp_path):
    data = _data(tmp_path, 30)
    # A process started while SIGINT is ignored keeps ignoring it after exec, and Python then installs no
    # KeyboardInterrupt handler; pytest-xdist workers can run with SIGINT ignored (a run once finished all 60
    # requests through the signal). So the child is started while SIGINT is caught here: it gets the default.
    caught = signal.signal(signal.SIGINT, signal.default_int_handler)
    with OpenAIServer(marker_judge, models=("judge",), latency=0.05) as srv:
        try:
            proc = subprocess.Popen(_eval_cmd(data, srv.url, tmp_path / "run", "--max-concurrency", "1"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, caught)
        deadline = time.monotonic() + 60
        while srv.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        sent = srv.requests
    assert proc.returncode == 130, f"exit {proc.returncode} after {sent} requests; stderr: {err[-1500:]}"
    assert "interrupted; re-run the same command to resume" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", ["ftp://host/v1", "not a url"])
def test_a_base_url_that_is_not_http_is_a_clear_error(bad):
    from misalign.models import ModelError

    with pytest.raises(ModelError, match="is not an http"):
        OpenAIChatModel("judge", base_urls=[bad], api_key_env="none")


# -- row 17: the manifest says which split was judged and what was skipped -------------------------------------

def test_the_manifest_records_the_real_split_and_the_rejected_rows(tmp_path, monkeypatch, capsys):
    rows = _items(6)
    rows[2]["prompt"] = ""  # malformed
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    with OpenAIServer(marker_judge, models=("judge",)) as srv:
        code, stdout, err = _cli(monkeypatch, capsys, _eval_args(data, srv.url, out, "--skip-bad"))
    assert code == 0, err
    dataset = json.loads((out / "manifest.json").read_text())["dataset"]
    assert dataset["split"] == "all" and dataset["items"] == 5 and dataset["rejected"] == 1
    assert dataset["rejects"] == str(data) + ".rejects.jsonl" and "split=all (no splits)" in " ".join(stdout.split())


# -- a judge that is also a generator is a one-line error ------------------------------------------------------

def test_filter_with_the_judge_among_the_generators_is_one_line(tmp_path, monkeypatch, capsys):
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"id": "p1", "prompt": "q", "generator": "openai/g", "texts": {
        "aligned": "a", "misaligned": "b"}, "rounds": {}, "verdicts": {}, "errors": {}}) + "\n")
    with OpenAIServer(marker_judge, models=("g",)) as srv:
        code, _, err = _cli(monkeypatch, capsys, ["filter", "-i", str(cands), "-o", str(tmp_path / "items.jsonl"),
                                                  "--judge", "openai/g", "--generator", "openai/g", "--base-url",
                                                  srv.url, "--api-key-env", "none", "--timeout", "5",
                                                  "--max-retries", "1"])
    assert code == 2 and "is also a generator" in _one_error_line(err) and srv.requests == 0


def test_help_names_values_and_keeps_whole_lines():
    """Row 20: help shows ``--model MODEL`` (not a Python type such as ``<list[str]>``) and never cuts a line."""
    proc = subprocess.run([sys.executable, "-m", "misalign", "eval", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0
    assert "--model MODEL" in proc.stdout and "--rpm RPM" in proc.stdout and "<list[" not in proc.stdout
    assert "…" not in proc.stdout and "Requests-per-minute limit per model." in " ".join(proc.stdout.split())


def test_expansion_is_asked_for_explicitly_everywhere(tmp_path):
    """Row 20: `build` expands only with --target-per-domain (default 0); `expand` has no hidden default of 50."""
    proc = subprocess.run([sys.executable, "-m", "misalign", "expand", "-i", str(_data(tmp_path)), "-o",
                           str(tmp_path / "x.parquet"), "--generator", "openai/g"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Missing option '--target-per-domain'" in proc.stderr
    from misalign.build.pipeline import BuildConfig

    assert BuildConfig(input=tmp_path / "p.jsonl", out=tmp_path / "b").target_per_domain == 0


async def test_embedded_classification_reports_progress_per_prompt():
    """Row 20: `classify` with the embedded model shows a count (it used to be a spinner for minutes)."""
    pytest.importorskip("wordllama")
    from misalign.build.classify import EmbeddedClassifier
    from misalign.records import Prompt
    from misalign.taxonomy import Taxonomy

    texts = [f"How should I greet my grandmother at festival number {i}?" for i in range(300)] + ["dup", "dup"]
    prompts = [Prompt(id=f"p{i}", prompt=t) for i, t in enumerate(texts)]
    clf = EmbeddedClassifier(Taxonomy.default(), encoder="wordllama")
    seen: list[int] = []
    result = await clf.classify(prompts, on_result=lambda i, _c: seen.append(i))
    assert sorted(seen) == list(range(302)) and len(result.prompts) == 302
    alone = clf.probabilities([texts[0]])[0]  # the same numbers (BLAS rounding aside) as classifying it alone
    for dim, vec in result.prompts[0].probabilities.items():
        assert vec == pytest.approx(alone[dim], abs=1e-5)
