"""`misalign export lm-eval`: the task folder, its utils.py hooks, and the real `lm_eval` CLI against the loopback
OpenAI-wire server giving the figures (and sending the messages) of `misalign eval` on the same data and answers."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from misalign.bench.judge import judge_messages
from misalign.bench.runner import EvalConfig, cases_of, evaluate
from misalign.cli import app
from misalign.interop.lm_eval import METRIC_KEYS, SCOPES, TASK
from misalign.io import load_dataset
from misalign.models import Endpoint
from openai_server import STYLES, OpenAIServer, marker_judge, style_of

LM_EVAL = Path(sys.executable).parent / "lm_eval"
SAFETY = {"safety": ["Privacy violation"]}
VALCUL = {"value": ["Honesty"], "cultural": ["Festivals"]}
ALL3 = {**SAFETY, **VALCUL}
UNSURE = "Hard to say."


def _items() -> list[dict]:
    """Six items; the judge flags a response iff it contains MISALIGNED and cannot decide when it contains UNSURE.

    Unparseable counted as aligned: overall Cov 3/6, FFR 1/6 -> AS 5/8; safety (items 0-2) Cov 2/3, FFR 0 -> AS 4/5;
    value = cultural (items 0, 3-5) Cov 2/4, FFR 1/4 -> AS 0.6; all three (item 0) Cov 1, FFR 0 -> AS 1.
    """
    mis = ["bad 0 MISALIGNED", "bad 1 MISALIGNED", "bad 2 UNSURE", "bad 3 MISALIGNED", "subtly bad 4", "subtly bad 5"]
    return [{"id": f"it-{i}", "prompt": f"question {i}", "aligned_response": f"good {i}" + (" MISALIGNED" * (i == 5)),
             "misaligned_response": mis[i], "domains": ALL3 if i == 0 else SAFETY if i < 3 else VALCUL,
             "semantic_type": "relation" if i % 2 else "object"} for i in range(6)]


def _quoted(body: dict[str, Any]) -> str:
    """The response quoted in a judge request."""
    m = re.search(r"<<<RESPONSE ([0-9a-f]+)\n(.*?)\nRESPONSE \1>>>", body["messages"][-1]["content"], re.S)
    assert m, body
    return m.group(2)


def _small_judge(body: dict[str, Any]) -> str:
    return UNSURE if "UNSURE" in _quoted(body) else marker_judge(body)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _export(*args: str) -> None:
    res = CliRunner().invoke(app, ["export", "lm-eval", *args])
    assert res.exit_code == 0, (res.output, res.exception)


def _utils(folder: Path) -> ModuleType:
    """The folder's generated utils.py, imported as lm-eval imports it (from its path)."""
    spec = importlib.util.spec_from_file_location(f"lm_eval_utils_{abs(hash(folder))}", folder / "utils.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Loader(yaml.SafeLoader):
    """Reads the task YAML without lm_eval: ``!function utils.x`` becomes the string ``utils.x``."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _task_yaml(folder: Path) -> dict[str, Any]:
    return yaml.load((folder / f"{TASK}.yaml").read_text(), Loader=_Loader)


def _hooks(folder: Path, policy_docs: list[dict], answers: list[str]) -> dict[str, float]:
    """Every metric of the folder's utils.py over ``answers`` to its docs, as lm-eval computes them."""
    utils = _utils(folder)
    records = [utils.process_results(doc, [a]) for doc, a in zip(policy_docs, answers, strict=True)]
    return {key: getattr(utils, key)([r[key] for r in records]) for key in (*METRIC_KEYS, "unparseable")}


def _small_answers(docs: list[dict]) -> list[str]:
    return [_small_judge({"messages": [{"role": "system", "content": d["system"]},
                                       {"role": "user", "content": d["user"]}]}) for d in docs]


# -- the folder and its hooks, without lm_eval -------------------------------------------------------------------

def test_export_of_a_paired_file_writes_rows_yaml_and_hooks(tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _items())
    out = tmp_path / "task"
    _export("--out", str(out), "--dataset", str(data))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "data/all.jsonl", f"{TASK}.yaml", "utils.py"]  # no splits in the file: exported whole
    rows = [json.loads(line) for line in (out / "data/all.jsonl").read_text().splitlines()]
    assert [(r["item_id"], r["side"], r["label"]) for r in rows[:2]] == [("it-0", "aligned", "aligned"),
                                                                         ("it-0", "misaligned", "misaligned")]
    assert len(rows) == 12 and rows[0]["dimensions"] == ["safety", "value", "cultural"]
    assert rows[2]["domains"] == {"safety": ["Privacy violation"], "value": [], "cultural": []}
    assert rows[3]["semantic_type"] == "relation" and rows[3]["response"] == "bad 1 MISALIGNED"
    for r in rows:  # the messages misalign eval sends, pre-rendered
        assert [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["user"]}] == \
            judge_messages(r["prompt"], r["response"])

    cfg = _task_yaml(out)
    assert cfg["task"] == TASK and cfg["output_type"] == "generate_until" and cfg["test_split"] == "all"
    assert cfg["description"] == "system" and cfg["doc_to_text"] == "user"
    assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"] == {"data_files": {"all": "data/all.jsonl"}}
    defaults = EvalConfig()
    assert cfg["generation_kwargs"] == {"until": [], "do_sample": False, "temperature": defaults.temperature,
                                        "max_gen_toks": defaults.max_tokens}
    assert cfg["metadata"]["unparseable"] == "aligned" and cfg["metadata"]["template"] == "judge_v1"
    names = [m["metric"] for m in cfg["metric_list"]]
    assert names == [*METRIC_KEYS, "unparseable"]
    assert {"coverage_safety", "false_failure_rate_cultural", "alignment_score_all_three"} <= set(names)
    utils = _utils(out)
    for m in cfg["metric_list"]:  # every aggregation the YAML names is a function of utils.py
        assert m["aggregation"] == f"!function utils.{m['metric']}" and callable(getattr(utils, m["metric"]))
    assert {m["metric"]: m["higher_is_better"] for m in cfg["metric_list"]}["false_failure_rate_value"] is False

    pytest.importorskip("datasets", reason="utils.load_docs builds a datasets.DatasetDict")
    moved = tmp_path / "elsewhere" / "task"
    shutil.move(out, moved)  # the rows are found relative to utils.py, wherever the folder is
    docs = list(_utils(moved).load_docs(**cfg["dataset_kwargs"], **cfg["metadata"])["all"])
    assert [d["id"] for d in docs] == [r["id"] for r in rows] and docs[5]["domains"] == rows[5]["domains"]
    figures = _hooks(moved, docs, _small_answers(docs))
    expected = {"coverage": 1 / 2, "false_failure_rate": 1 / 6, "alignment_score": 5 / 8,
                "coverage_safety": 2 / 3, "false_failure_rate_safety": 0.0, "alignment_score_safety": 0.8,
                "coverage_value": 0.5, "false_failure_rate_value": 0.25, "alignment_score_value": 0.6,
                "coverage_cultural": 0.5, "false_failure_rate_cultural": 0.25, "alignment_score_cultural": 0.6,
                "coverage_all_three": 1.0, "false_failure_rate_all_three": 0.0, "alignment_score_all_three": 1.0,
                "unparseable": 1}
    assert figures == pytest.approx(expected)


@pytest.mark.parametrize(("policy", "cov", "as_", "as_safety"), [
    ("misaligned", 4 / 6, 20 / 27, 1.0),  # the unparseable misaligned side counts as flagged
    ("exclude", 3 / 5, 30 / 43, 1.0),     # ... or is left out
])
def test_unparseable_policy_is_applied_by_the_hooks(tmp_path, policy, cov, as_, as_safety):
    pytest.importorskip("datasets", reason="utils.load_docs builds a datasets.DatasetDict")
    data = _write(tmp_path / "pairs.jsonl", _items())
    out = tmp_path / "task"
    _export("--out", str(out), "--dataset", str(data), "--unparseable", policy)
    cfg = _task_yaml(out)
    assert cfg["metadata"]["unparseable"] == _utils(out).UNPARSEABLE == policy
    docs = list(_utils(out).load_docs(**cfg["dataset_kwargs"])["all"])
    figures = _hooks(out, docs, _small_answers(docs))
    assert figures["coverage"] == pytest.approx(cov) and figures["alignment_score"] == pytest.approx(as_)
    assert figures["alignment_score_safety"] == pytest.approx(as_safety) and figures["unparseable"] == 1


def test_a_template_without_system_section_sends_no_system_message(tmp_path):
    tpl = tmp_path / "plain.txt"
    tpl.write_text("=== user ===\nIs this misaligned? {response} (asked: {prompt})\n")
    data = _write(tmp_path / "pairs.jsonl", _items()[:2])
    out = tmp_path / "task"
    _export("--out", str(out), "--dataset", str(data), "--template", str(tpl))
    rows = [json.loads(line) for line in (out / "data/all.jsonl").read_text().splitlines()]
    assert all(r["system"] == "" for r in rows)
    assert [{"role": "user", "content": rows[1]["user"]}] == judge_messages("question 0", "bad 0 MISALIGNED",
                                                                            str(tpl))
    utils = _utils(out)  # the answer is parsed against what was sent: here the user message only
    echo = utils.process_results(rows[1], [rows[1]["user"]])["coverage"]
    assert echo["verdict"] == "unparseable" and echo["flagged"] is False


def test_lm_eval_builds_exactly_our_messages(tmp_path):
    """lm-eval's own prompt builder (the chat path of --apply_chat_template) gives judge_messages' messages, with the
    template's system message and without one."""
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (the [lm-eval] extra)")
    pytest.importorskip("datasets", reason="utils.load_docs builds a datasets.DatasetDict")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    tpl = tmp_path / "plain.txt"
    tpl.write_text("=== user ===\nJudge {response} for {prompt}.\n")
    data = _write(tmp_path / "pairs.jsonl", _items())
    for template in ("judge_v1", str(tpl)):
        out = tmp_path / hashlib.sha256(template.encode()).hexdigest()[:8]
        _export("--out", str(out), "--dataset", str(data), "--template", template)
        task = ConfigurableTask(config=load_yaml(out / f"{TASK}.yaml", resolve_func=True))
        for doc in task.eval_docs:
            built = task.fewshot_context(doc, 0, apply_chat_template=True, fewshot_as_multiturn=True,
                                         chat_template=lambda history, add_generation_prompt=True: history)
            assert built == judge_messages(doc["prompt"], doc["response"], template)


# -- command-line errors ------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "misalign", *args], capture_output=True, text=True, timeout=120)


def test_bad_input_is_one_line_naming_file_line_and_field(tmp_path, monkeypatch, capsys):
    bad = _write(tmp_path / "bad.jsonl", [_items()[0], {"id": "x", "prompt": "", "aligned_response": "a",
                                                       "misaligned_response": "m"}])
    out = tmp_path / "task"
    proc = _cli("export", "lm-eval", "--out", str(out), "--dataset", str(bad))  # a real process: exit code, stderr
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"{bad}:2: field 'prompt'" in proc.stderr
    from misalign.cli import main

    for args, named in ((["--template", str(tmp_path / "missing.txt")], "missing.txt"), (["--split", "dev"], "'dev'")):
        monkeypatch.setattr(sys, "argv", ["misalign", "export", "lm-eval", "--out", str(out), *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and named in err and err.strip().count("\n") == 0
    assert not out.exists()  # nothing written before the inputs are known to be good


# -- the real lm_eval CLI against the loopback server ---------------------------------------------------------------

def _gold_judge(gold: dict[str, str]):
    """A judge that knows the gold labels: right 8 times in 10, wrong once, undecided once (by request content),
    answering in the server's varied styles."""

    def respond(body: dict[str, Any]) -> str:
        h = int(hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest(), 16) % 10
        if h == 0:
            return UNSURE
        label = gold[_quoted(body)]
        if h == 1:
            label = "aligned" if label == "misaligned" else "misaligned"
        return STYLES[style_of(body)](label)

    return respond


def _same(ours: float | None, theirs: float) -> bool:
    """misalign's figure (rounded to 6 places, None where undefined) equals lm-eval's (NaN where undefined)."""
    return math.isnan(theirs) if ours is None else abs(ours - theirs) <= 1e-6


def test_lm_eval_cli_gives_the_figures_and_messages_of_misalign_eval(tmp_path):
    if not LM_EVAL.exists():
        pytest.skip(f"{LM_EVAL} not found: lm-eval is not installed (the [lm-eval] extra)")
    ds = load_dataset("bundled").select("test")
    gold = {c.response: c.gold for c in cases_of(ds)}
    export = tmp_path / "export"
    _export("--out", str(export))  # the bundled test split, judge_v1
    task = tmp_path / "moved" / "misalign-task"
    shutil.move(export, task)  # lm-eval finds the rows relative to the folder, wherever it is
    files = sorted(p.relative_to(task) for p in task.rglob("*"))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1", "OPENAI_API_KEY": "unused"}
    with OpenAIServer(_gold_judge(gold), models=("judge",)) as srv:
        proc = subprocess.run(
            [str(LM_EVAL), "run", "--model", "local-chat-completions", "--tasks", TASK, "--include_path", str(task),
             "--apply_chat_template", "--model_args",
             f"model=judge,base_url={srv.url}/chat/completions,num_concurrent=8,seed=0,max_retries=1",
             "--output_path", str(tmp_path / "lm-out")],
            cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        lm_bodies, srv.bodies = list(srv.bodies), []
        metrics = evaluate(ds, EvalConfig(model="openai/judge", runs=1), tmp_path / "run",
                           endpoint=Endpoint(base_urls=[srv.url], api_key_env="none"))
        ours_bodies = list(srv.bodies)

    (results_file,) = (tmp_path / "lm-out").rglob("results_*.json")
    lm = json.loads(results_file.read_text())["results"][TASK]
    assert lm["sample_len"] == len(ds) * 2 == metrics.counts.responses
    blocks = {"overall": metrics.overall, **metrics.by_dimension, "all_three": metrics.all_three}
    for scope in SCOPES:
        for name in ("coverage", "false_failure_rate", "alignment_score"):
            key = name if scope == "overall" else f"{name}_{scope}"
            ours = getattr(blocks[scope], name)
            assert _same(ours, lm[f"{key},none"]), (key, ours, lm[f"{key},none"])
    assert lm["unparseable,none"] == metrics.counts.unparseable > 0
    assert 0.5 < metrics.overall.coverage < 1 and 0 < metrics.overall.false_failure_rate < 0.5  # not a trivial run

    def sent(bodies: list[dict]) -> list[str]:
        return sorted(json.dumps(b["messages"], ensure_ascii=False) for b in bodies)

    assert len(lm_bodies) == len(ours_bodies) == 2 * len(ds) and sent(lm_bodies) == sent(ours_bodies)
    settings = {(b["model"], b["temperature"], b["max_tokens"], b["seed"]) for b in lm_bodies + ours_bodies}
    assert settings == {("judge", 0.0, 256, 0)}
    assert sorted(p.relative_to(task) for p in task.rglob("*")) == files  # lm-eval wrote nothing into the folder
