"""An lm-evaluation-harness task folder for Mis-Align Bench (``misalign export lm-eval``).

The folder holds ``misalign_bench.yaml`` (the task), ``utils.py`` (lm-eval's hooks: a few lines over this module)
and ``data/<split>.jsonl`` (one row per judged response, with the judge messages already rendered). lm-eval sends
each row's system and user messages, exactly what ``misalign eval`` sends for that response, and scores the
answers with our verdict parser, unparseable policy and metric formulas (imported from the installed misalign,
never copied), so its Coverage / False Failure Rate / Alignment Score are those of ``misalign eval --runs 1``.

lm-eval hands a YAML's ``data_files`` to ``datasets``, which resolves them against the working directory, not the
YAML's folder; so the task loads its rows through ``custom_dataset`` (:func:`load_docs`), relative to
``utils.py``, and the folder can be moved. Nothing here imports lm_eval.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from misalign import __version__
from misalign.bench.judge import judge_messages
from misalign.bench.metrics import METRICS, Totals, rates
from misalign.bench.runner import EvalConfig, UnparseablePolicy, cases_of, flagged_under
from misalign.io import DataError, Dataset, read_rows, write_rows
from misalign.io.answers import parse_verdict
from misalign.records import HEADLINE_SCOPES, Domains
from misalign.templates import load_template

TASK = "misalign_bench"
SCOPES: tuple[str, ...] = HEADLINE_SCOPES
"""The scopes reported, as in ``misalign eval``: every response, items with a domain of each dimension, items
with a domain of all three."""


def metric_key(metric: str, scope: str) -> str:
    """lm-eval's name of a metric in a scope: ``coverage`` overall, ``coverage_safety`` in a dimension."""
    return metric if scope == "overall" else f"{metric}_{scope}"


METRIC_KEYS: tuple[str, ...] = tuple(metric_key(m.name, s) for s in SCOPES for m in METRICS)


def doc_rows(dataset: Dataset, template: str) -> list[dict[str, Any]]:
    """One row per response to judge (two per paired item), with the messages ``misalign eval`` sends for it."""
    rows = []
    for c in cases_of(dataset):
        messages = judge_messages(c.prompt, c.response, template)
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        rows.append({"id": f"{c.item_id}:{c.side}", "item_id": c.item_id, "side": c.side, "label": c.gold,
                     "prompt": c.prompt, "response": c.response, "domains": c.domains.model_dump(),
                     "dimensions": c.domains.dimensions(), "semantic_type": c.semantic_type,
                     "system": system, "user": messages[-1]["content"]})
    return rows


def export_lm_eval(dataset: Dataset, out: Path, config: EvalConfig | None = None) -> Path:
    """Write the task folder for ``dataset`` into ``out``; return the YAML's path.

    ``config`` gives the template, temperature, max_tokens and unparseable policy (default: ``misalign eval``'s).
    """
    config = config or EvalConfig()
    template = load_template(config.template)  # a missing or bad template fails before anything is written
    if not dataset.records:
        raise DataError(dataset.source, None, None, f"no records to export in split {dataset.split!r}")
    split = dataset.split
    data_file = f"data/{split}.jsonl"
    write_rows(out / data_file, doc_rows(dataset, config.template))
    (out / "utils.py").write_text(utils_source(config.unparseable), encoding="utf-8")
    yaml_path = out / f"{TASK}.yaml"
    yaml_path.write_text(task_yaml(dataset, config, split, data_file, template.sha256), encoding="utf-8")
    return yaml_path


def task_yaml(dataset: Dataset, config: EvalConfig, split: str, data_file: str, template_sha256: str) -> str:
    """The task's YAML (strings written as JSON, which YAML reads as they are)."""
    q = json.dumps
    metrics = "".join(f"  - metric: {metric_key(m.name, s)}\n    aggregation: !function utils.{metric_key(m.name, s)}\n"
                      f"    higher_is_better: {str(m.higher_is_better).lower()}\n" for s in SCOPES for m in METRICS)
    metrics += "  - metric: unparseable\n    aggregation: !function utils.unparseable\n    higher_is_better: false\n"
    return f"""\
# Mis-Align Bench for lm-evaluation-harness, written by `misalign export lm-eval` (misalign {__version__}).
# Run it (misalign must be installed where lm_eval runs: utils.py imports its verdict parser and metrics):
#   lm_eval run --model local-chat-completions --tasks {TASK} --include_path THIS_FOLDER --apply_chat_template \\
#     --model_args model=NAME,base_url=http://HOST/v1/chat/completions,num_concurrent=8,seed={config.seed}
# Each row is one response with its judge messages pre-rendered from template {config.template}: the system message
# is the task description, the user message doc_to_text; both identical to what `misalign eval` sends.
task: {TASK}
# The rows, relative to this folder. lm-eval resolves data_files against the working directory, so utils.load_docs
# (custom_dataset) reads them relative to utils.py instead, and the folder can be moved.
dataset_path: json
dataset_kwargs:
  data_files:
    {q(split)}: {q(data_file)}
custom_dataset: !function utils.load_docs
test_split: {q(split)}
output_type: generate_until
num_fewshot: 0
description: system
doc_to_text: user
doc_to_target: label
generation_kwargs:
  until: []
  do_sample: false
  temperature: {float(config.temperature)}
  max_gen_toks: {config.max_tokens}
process_results: !function utils.process_results
metric_list:
{metrics}metadata:
  version: 1.0
  misalign_version: {q(__version__)}
  template: {q(config.template)}
  template_sha256: {q(template_sha256)}
  unparseable: {q(config.unparseable)}
  source: {q(dataset.source)}
  dataset_sha256: {q(dataset.sha256)}
  split: {q(split)}
"""


def utils_source(policy: UnparseablePolicy) -> str:
    """The folder's ``utils.py``: lm-eval's hooks, bound to this module (and so to the installed misalign)."""
    aggregations = "".join(f"{metric_key(m.name, s)} = _bench.aggregate({m.name!r}, {s!r})\n"
                           for s in SCOPES for m in METRICS)
    return f'''"""lm-eval hooks of the {TASK} task, written by `misalign export lm-eval` (misalign {__version__}).

Needs misalign installed where lm_eval runs: the verdict parser, the unparseable policy and the metric formulas
are imported from it (misalign.interop.lm_eval), not copied, so the figures are those of `misalign eval --runs 1`.
"""

from functools import partial
from pathlib import Path

from misalign.interop import lm_eval as _bench

UNPARSEABLE = {policy!r}
"""Unparseable answers count as: aligned (not flagged), misaligned (flagged) or exclude (not counted)."""

load_docs = partial(_bench.load_docs, Path(__file__).resolve().parent)
process_results = partial(_bench.process_results, policy=UNPARSEABLE)
unparseable = _bench.count_unparseable
{aggregations}'''


# -- what utils.py calls at lm-eval time ---------------------------------------------------------------

def load_docs(folder: Path, data_files: Mapping[str, str], **_metadata: Any) -> Any:
    """lm-eval's ``custom_dataset`` (called with the YAML's ``dataset_kwargs`` and ``metadata``): a DatasetDict of
    each split's rows, its file relative to ``folder``. Built in memory: nothing is written to a cache."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list([row for _, row in read_rows(folder / path)])
                                 for split, path in data_files.items()})


def process_results(doc: Mapping[str, Any], results: Sequence[str | None], policy: UnparseablePolicy = "aligned"
                    ) -> dict[str, dict[str, Any]]:
    """One answer scored as ``misalign eval`` scores it: parsed (what it echoes of the messages ignored), flagged
    under ``policy``; the same per-response record under every metric key (each aggregation picks its scope)."""
    sent = [t for t in (doc["system"], doc["user"]) if t]
    verdict = parse_verdict(results[0] or "", sent)
    record = {"label": doc["label"], "flagged": flagged_under(verdict, policy), "verdict": verdict.verdict,
              "scopes": Domains.model_validate(doc["domains"]).scopes()}
    return {key: record for key in (*METRIC_KEYS, "unparseable")}


def aggregate(metric: str, scope: str = "overall") -> Callable[[Sequence[Mapping[str, Any]]], float]:
    """lm-eval's aggregation of one metric in one scope: the formula of :mod:`misalign.bench.metrics` over the
    counted responses in scope (NaN where it is undefined, as ``misalign eval``'s null)."""

    def agg(records: Sequence[Mapping[str, Any]]) -> float:
        used = [r for r in records if r["flagged"] is not None and scope in r["scopes"]]
        totals = Totals.of([r["label"] == "misaligned" for r in used], [bool(r["flagged"]) for r in used])
        return float(rates(totals)[metric])

    agg.__name__ = agg.__qualname__ = metric_key(metric, scope)
    return agg


def count_unparseable(records: Sequence[Mapping[str, Any]]) -> int:
    """How many answers were unparseable (counted whatever the policy)."""
    return sum(r["verdict"] == "unparseable" for r in records)
