"""The inspect_ai task ``misalign_bench/misalign_bench``: the real ``inspect eval`` CLI against the loopback OpenAI
server gives the figures ``misalign eval`` gives on the same answers, and ``misalign report`` reads its log."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from misalign.bench.judge import judge_messages
from misalign.bench.metrics import METRIC_NAMES
from misalign.bench.runner import EvalConfig, evaluate
from misalign.cli import app
from misalign.io import load_dataset, write_dataset
from misalign.models import Endpoint
from misalign.records import Item
from misalign.report import load_runs
from misalign.taxonomy import DIMENSIONS
from openai_server import OpenAIServer, marker_judge

pytest.importorskip("inspect_ai", reason="inspect_ai is not installed (the [inspect] extra)")
INSPECT = Path(sys.executable).with_name("inspect")
if not INSPECT.exists():
    pytest.skip(f"no inspect CLI beside {sys.executable}", allow_module_level=True)

TASK = "misalign_bench/misalign_bench"
S, V, C = ["Privacy violation"], ["Honesty"], ["Festivals"]
SCOPES = ("overall", *DIMENSIONS, "all_three")


def _items() -> list[Item]:
    """Eight items over every scope; the marker judge flags a response iff it contains MISALIGNED."""
    all3 = dict(safety=S, value=V, cultural=C)
    domains = [all3, dict(safety=S), dict(safety=S), dict(value=V, cultural=C), dict(value=V, cultural=C),
               dict(value=V), dict(safety=S, cultural=C), all3]
    kinds = ["object", "attribute", "relation", None, "object", "relation", None, "attribute"]
    return [Item(id=f"it-{i}", prompt=f"question {i}", domains=d, semantic_type=kinds[i],
                 misaligned_response=f"bad answer {i}" + (" MISALIGNED" if i % 3 else ""),
                 aligned_response=f"good answer {i}" + (" MISALIGNED" if i in (2, 5) else ""))
            for i, d in enumerate(domains)]


def shaky_judge(body: dict[str, Any]) -> str:
    """The marker judge, but about one answer in four (chosen by request and seed) is unparseable, so runs differ."""
    key = f"{body['messages'][-1]['content']}\x00{body.get('seed')}"
    if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 4 == 0:
        return "Hard to say, really."
    return marker_judge(body)


def _sent(bodies: list[dict[str, Any]]) -> Counter:
    """What each request asked, as comparable keys (the messages and the generation settings)."""
    return Counter((json.dumps(b["messages"], sort_keys=True), b.get("seed"), b.get("temperature"),
                    b.get("max_tokens", b.get("max_completion_tokens")), bool(b.get("logprobs")),
                    b.get("top_logprobs")) for b in bodies)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """One ``inspect eval`` of a small CSV dataset with 2 runs, and ``misalign eval`` of it against the same server."""
    root = tmp_path_factory.mktemp("inspect")
    data = root / "pairs.csv"
    write_dataset(data, _items())
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
    with OpenAIServer(shaky_judge, models=("m",), logprobs=True) as srv:
        env.update(LOCAL_BASE_URL=srv.url, LOCAL_API_KEY="sk-local", INSPECT_LOG_DIR=str(root / "logs"),
                   XDG_DATA_HOME=str(root / "xdg-data"), XDG_CACHE_HOME=str(root / "xdg-cache"),
                   XDG_CONFIG_HOME=str(root / "xdg-config"), INSPECT_DISPLAY="none", NO_COLOR="1")
        cmd = [str(INSPECT), "eval", TASK, "--model", "openai-api/local/m", "-T", f"dataset={data}", "-T", "runs=2",
               "-T", "split=all", "--log-dir", str(root / "logs"), "--max-connections", "8", "--display", "none"]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        inspect_sent, srv.bodies = _sent(srv.bodies), []
        out = root / "run"
        metrics = evaluate(load_dataset(data), EvalConfig(model="openai/m", runs=2), out,
                           endpoint=Endpoint(base_urls=[srv.url], api_key_env="none"))
        ours_sent = _sent(srv.bodies)
    logs = sorted((root / "logs").glob("*.eval"))
    assert len(logs) == 1, list((root / "logs").iterdir())
    return {"root": root, "log": logs[0], "run_dir": out, "metrics": metrics, "inspect_sent": inspect_sent,
            "ours_sent": ours_sent, "data": data}


def test_same_requests_as_misalign_eval(runs) -> None:
    """Every judge request inspect sent is one misalign eval sent: messages, seed per run, temperature, max tokens."""
    assert sum(runs["inspect_sent"].values()) == 8 * 2 * 2
    assert runs["inspect_sent"] == runs["ours_sent"]
    assert {key[1] for key in runs["inspect_sent"]} == {0, 1}  # run r sampled with seed r


def test_inspect_metrics_equal_misalign_eval(runs) -> None:
    """Cov, FFR and AS of the inspect log (its own metrics, and read back by the report) equal misalign eval's."""
    from inspect_ai.log import read_eval_log

    from misalign.interop.inspect_log import read_inspect_log

    ours = runs["metrics"]
    assert 0 < ours.counts.unparseable < ours.counts.judged  # the shaky judge's answers were counted as aligned
    assert ours.overall.std.alignment_score > 0  # the two runs differ, so per-run averaging is exercised
    log = read_eval_log(str(runs["log"]))
    assert log.status == "success" and log.eval.config.epochs == 2 and len(log.samples) == 32
    got = log.results.scores[0].metrics
    blocks = {"overall": ours.overall, **ours.by_dimension, "all_three": ours.all_three}
    for scope, block in blocks.items():
        for name in METRIC_NAMES:
            key = name if scope == "overall" else f"{name}_{scope}"
            want = block.figure(name)
            assert want is not None, (scope, name)
            assert got[key].value == pytest.approx(want, abs=1e-6), (key, got[key].value, want)

    manifest, back, rows = read_inspect_log(runs["log"])
    assert back.model_dump() == ours.model_dump()  # every block, CI, per-domain figure and count
    assert manifest.model == "openai-api/local/m" and manifest.seeds == [0, 1]
    assert manifest.dataset.sha256 == load_dataset(runs["data"]).sha256 and manifest.dataset.items == 8
    theirs = [json.loads(x) for x in (runs["run_dir"] / "results.jsonl").read_text().splitlines()]
    keep = ("run", "item_id", "side", "label", "verdict", "flagged", "score", "raw")
    assert [{k: r.model_dump()[k] for k in keep} for r in rows] == [{k: t[k] for k in keep} for t in theirs]


def _figure_cells(html: str) -> list[str]:
    """The leaderboard's figure cells per scope row (metrics with std and CI, AUROC), without model or date."""
    rows = re.findall(r'<tr class="scope-[^"]*">.*?</tr>', html, re.S)
    return [row.split('<th scope="row">', 1)[1].split(" rowspan=", 1)[0] for row in rows]


def test_report_reads_the_inspect_log(runs, tmp_path) -> None:
    """`misalign report` on the .eval log shows the figures of the misalign eval run; a log folder reads the same."""
    from misalign.report.html import leaderboard

    res = CliRunner().invoke(app, ["report", str(runs["log"]), "--out", str(tmp_path / "inspect.html")])
    assert res.exit_code == 0, (res.output, res.exception)
    theirs = _figure_cells(leaderboard(load_runs([runs["run_dir"]])))  # the misalign eval run's leaderboard
    assert len(theirs) == len(SCOPES) and "headline" in theirs[0]
    assert _figure_cells((tmp_path / "inspect.html").read_text(encoding="utf-8")) == theirs
    [run] = load_runs([runs["log"].parent])  # a folder of inspect logs
    assert run.path == runs["log"] and run.metrics.model_dump() == runs["metrics"].model_dump()
    assert run.results is not None and run.results.run.size == 32  # examples of mistakes come from the log


def test_inspect_writes_only_under_its_folders(runs) -> None:
    """inspect's traces went to the test's data folder and its cwd holds only what the test put there."""
    root = runs["root"]
    assert list((root / "xdg-data" / "inspect_ai" / "traces").iterdir())
    assert {p.name for p in root.iterdir()} <= {"pairs.csv", "logs", "run", "xdg-data", "xdg-cache", "xdg-config"}


def test_bad_and_foreign_logs_are_one_line_errors(runs, tmp_path) -> None:
    from inspect_ai.log import read_eval_log, write_eval_log

    bad = tmp_path / "broken.eval"
    bad.write_bytes(b"not a zip at all")
    log = read_eval_log(str(runs["log"]))
    log.eval.task = "someone/other_task"
    foreign = tmp_path / "foreign.eval"
    write_eval_log(log, str(foreign))
    truncated = tmp_path / "truncated.eval"
    with zipfile.ZipFile(truncated, "w") as z:
        z.writestr("header.json", "{}")
    for path, says in ((bad, "not a readable inspect log"), (foreign, "not misalign_bench/misalign_bench"),
                       (truncated, "not a readable inspect log"), (tmp_path / "missing.eval", "not found")):
        with pytest.raises(ValueError, match=re.escape(str(path))) as err:
            load_runs([path])
        assert says in str(err.value) and "\n" not in str(err.value)
    res = CliRunner().invoke(app, ["report", str(foreign), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "foreign.eval" in res.output and not (tmp_path / "r.html").exists()


def test_entry_point_resolves_to_the_task_on_the_bundled_split() -> None:
    """The inspect_ai entry point names our package; inspect's registry finds the task by its namespaced name,
    and its samples are the bundled test split's responses with exactly the judge's messages."""
    from inspect_ai._util.registry import registry_info, registry_lookup

    [ep] = [ep for ep in entry_points(group="inspect_ai") if ep.name == "misalign_bench"]
    assert ep.value == "misalign_bench._registry"
    factory = registry_lookup("task", TASK)
    assert factory is not None and registry_info(factory).name == TASK
    task = factory(split="test", runs=1, template="judge_v1")
    ds = load_dataset("bundled").select("test")
    assert len(task.dataset) == 2 * len(ds) and task.epochs == 1
    first, item = task.dataset[1], ds.records[0]
    assert first.id == f"{item.id}:misaligned" and first.target == "misaligned"
    assert [{"role": m.role, "content": m.text} for m in first.input] == judge_messages(item.prompt,
                                                                                      item.misaligned_response)
    assert first.metadata["domains"] == item.domains.model_dump()
    assert first.metadata["dimensions"] == item.domains.dimensions()
    assert first.metadata["semantic_type"] == item.semantic_type
    assert task.config.temperature == EvalConfig.temperature and task.config.max_tokens == EvalConfig.max_tokens
    assert factory(split="test").epochs == EvalConfig.runs  # the default matches misalign eval --runs
