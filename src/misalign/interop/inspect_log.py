"""Reading an inspect_ai log of the ``misalign_bench`` task back as a run record (manifest, metrics, result rows).

The samples are turned back into the runner's cases and judgements, and the metrics computed by
:func:`misalign.bench.runner.compute_metrics`, so figures, CIs and per-domain blocks are the same code as for a run
directory of ``misalign eval``. inspect_ai is imported only when a log is read.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from misalign.bench.judge import Judgement
from misalign.bench.record import RECORD_VERSION, Manifest, Metrics, ResultRow
from misalign.bench.runner import Case, EvalConfig, compute_metrics, result_rows
from misalign.records import Domains, Verdict
from misalign.redact import redact_url

TASK = "misalign_bench"
"""The task's unqualified name (registered as ``misalign_bench/misalign_bench``)."""
SCORER = "misalign_judge"
"""The scorer whose scores hold the parsed verdicts (:data:`misalign.interop.inspect_task.SCORER`)."""
_SIDES = {"aligned": 0, "misaligned": 1, "response": 2}


def inspect_logs(path: Path) -> list[Path] | None:
    """The inspect logs ``path`` names: itself when it ends in ``.eval``, the ``*.eval`` files of a folder that is
    not a run directory; None for anything else (a run directory of ``misalign eval``)."""
    path = Path(path)
    if path.suffix == ".eval":
        return [path]
    if path.is_dir() and not (path / "manifest.json").exists():
        logs = sorted(path.glob("*.eval"))
        return logs or None
    return None


def _read_log(path: Path, header_only: bool = False) -> Any:
    try:
        from inspect_ai.log import read_eval_log
    except ImportError:
        raise ValueError(f"{path}: an inspect log; reading it needs inspect_ai (the [inspect] extra)") from None
    if not path.is_file():
        raise ValueError(f"{path}: not found")
    try:
        return read_eval_log(str(path), header_only=header_only)
    except Exception as exc:  # inspect raises many kinds (zip, JSON, validation): one line naming the file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path}: not a readable inspect log ({reason})") from None


def is_task_log(path: Path) -> bool:
    """Whether ``path`` is a readable inspect log of the ``misalign_bench`` task (header only)."""
    try:
        return _is_ours(_read_log(Path(path), header_only=True))
    except ValueError:
        return False


def _is_ours(log: Any) -> bool:
    return log.eval.task.split("/")[-1] == TASK and isinstance((log.eval.metadata or {}).get("config"), dict)


def read_inspect_log(path: Path) -> tuple[Manifest, Metrics, list[ResultRow]]:
    """The run record of an inspect log of ``misalign_bench``; ValueError naming the file when it is not one."""
    path = Path(path)
    log = _read_log(path)
    if not _is_ours(log):
        raise ValueError(f"{path}: an inspect log of task {log.eval.task!r}, not {TASK}/{TASK} (misalign-bench)")
    if not log.samples:
        raise ValueError(f"{path}: the log holds no samples (status {log.status}; written with --no-log-samples?)")
    meta = log.eval.metadata
    saved = meta["config"]
    config = EvalConfig(**{f.name: saved[f.name] for f in fields(EvalConfig) if f.name in saved})
    runs = max([log.eval.config.epochs or config.runs, *(s.epoch for s in log.samples)])
    config = EvalConfig(**{**asdict(config), "model": log.eval.model, "runs": runs})
    cases = _cases(path, log.samples)
    by_key = {(str(s.id), s.epoch): s for s in log.samples}
    judgements = [[_judgement(by_key.get((f"{c.item_id}:{c.side}", run + 1))) for c in cases] for run in range(runs)]
    rows = result_rows(cases, judgements, config)
    n_items = len({c.item_index for c in cases})
    metrics = compute_metrics(cases, rows, n_items, config)
    ok = [s for s in log.samples if s.error is None and s.scores and SCORER in s.scores]
    served = {"answers": len(ok),
              "with_logprobs": sum(bool(s.output.choices and s.output.choices[0].logprobs) for s in ok),
              "with_confidence": sum((s.scores[SCORER].metadata or {}).get("verdict", {}).get("confidence") is not None
                                     for s in ok)}
    manifest = Manifest(
        record_version=RECORD_VERSION, misalign_version=meta.get("misalign_version", "unknown"),
        created=str(log.eval.created), packages=dict(log.eval.packages or {}), model=log.eval.model,
        dataset={**meta.get("dataset", {}), "items": n_items}, seeds=[config.seed + r for r in range(runs)],
        template=meta.get("template", {"name": config.template, "sha256": None}), config=asdict(config),
        endpoint={"base_urls": [redact_url(log.eval.model_base_url)]} if log.eval.model_base_url else {},
        command=["inspect", "eval", log.eval.task, "--model", log.eval.model,
                 *[a for k, v in log.eval.task_args_passed.items() for a in ("-T", f"{k}={v}")]],
        served=served)
    return manifest, metrics, rows


def _cases(path: Path, samples: list[Any]) -> list[Case]:
    """The runner's cases, in its order (items in dataset order, aligned before misaligned), items renumbered."""
    seen: dict[str, Any] = {}
    for s in samples:
        seen.setdefault(str(s.id), s)
    try:
        first = sorted(seen.values(), key=lambda s: (int(s.metadata["item_index"]), _SIDES[s.metadata["side"]]))
        items = {i: k for k, i in enumerate(dict.fromkeys(int(s.metadata["item_index"]) for s in first))}
        return [Case(items[int(m["item_index"])], str(m["item_id"]), m["side"], m["label"], m["prompt"],
                     m["response"], Domains.model_validate(m["domains"]), m.get("semantic_type"))
                for m in (s.metadata for s in first)]
    except (KeyError, TypeError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ValueError(f"{path}: sample metadata is not that of misalign_bench ({why})") from None


def _judgement(sample: Any | None) -> Judgement:
    """A sample's answer as the runner's judgement: a failed call when it errored or was not run."""
    if sample is None:
        return Judgement(Verdict(verdict="unparseable"), error="not run")
    if sample.error is not None:
        return Judgement(Verdict(verdict="unparseable"), error=(sample.error.message.splitlines() or ["error"])[0])
    score = (sample.scores or {}).get(SCORER)
    if score is None:
        return Judgement(Verdict(verdict="unparseable"), error="not scored")
    return Judgement(Verdict.model_validate((score.metadata or {}).get("verdict") or {"verdict": "unparseable"}),
                     raw=sample.output.completion)
