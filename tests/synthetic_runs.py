"""Synthetic run directories for report tests and the report benchmark, written by the real runner.

A scripted judge (the :class:`~misalign.bench.judge.Judge` interface) flags responses at a chosen Coverage and
False Failure Rate (optionally per dimension, so a model can trade one dimension for another); the runner's own
``evaluate`` writes manifest, results and metrics, so the report is tested on exactly what ``misalign eval``
writes. Items are the same for every model made with the same ``dataset_seed``, so runs pair up by ``item_id``
and share a dataset sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from misalign.bench.judge import Judgement, JudgeRequest, OfflineJudge
from misalign.bench.runner import EvalConfig, evaluate
from misalign.io import Dataset
from misalign.records import Domains, Item, Verdict
from misalign.taxonomy import DIMENSIONS, Taxonomy

__all__ = ["ScriptedJudge", "SyntheticItems", "synthetic_items", "write_synthetic_run"]


@dataclass
class SyntheticItems:
    """A synthetic paired dataset."""

    ids: list[str]
    prompts: list[str]
    aligned: list[str]
    misaligned: list[str]
    domains: list[dict[str, list[str]]]

    def dataset(self, drop_domains: Sequence[str] = (), inject: Mapping[str, str] | None = None) -> Dataset:
        """The items as a dataset (test split), without ``drop_domains`` and with ``inject`` text appended to the
        ``prompt``/``response`` of every item."""
        inject, drop = dict(inject or {}), set(drop_domains)
        records = [Item(id=i, prompt=p + inject.get("prompt", ""), aligned_response=a + inject.get("response", ""),
                        misaligned_response=m + inject.get("response", ""), split="test",
                        domains=Domains(**{d: [n for n in ns if n not in drop] for d, ns in doms.items()}))
                   for i, p, a, m, doms in zip(self.ids, self.prompts, self.aligned, self.misaligned, self.domains,
                                               strict=True)]
        digest = hashlib.sha256(json.dumps([r.model_dump(mode="json") for r in records]).encode()).hexdigest()
        return Dataset(records, "synthetic", digest, "misalign", splits_present={"test"}, split="test")


def synthetic_items(n_items: int, dataset_seed: int = 0, taxonomy: Taxonomy | None = None) -> SyntheticItems:
    """``n_items`` paired items with one safety (60%), one or two value and one cultural (70%) domain each."""
    tax = taxonomy or Taxonomy.default()
    rng = np.random.default_rng(dataset_seed)
    names = {dim: tax.names(dim) for dim in DIMENSIONS}
    items = SyntheticItems([], [], [], [], [])
    for i in range(n_items):
        doms: dict[str, list[str]] = {
            "safety": [names["safety"][rng.integers(len(names["safety"]))]] if rng.random() < 0.6 else [],
            "value": sorted({names["value"][k] for k in rng.integers(len(names["value"]), size=rng.integers(1, 3))}),
            "cultural": [names["cultural"][rng.integers(len(names["cultural"]))]] if rng.random() < 0.7 else [],
        }
        topic = ", ".join(n for ns in doms.values() for n in ns)
        items.ids.append(f"item-{dataset_seed}-{i:06d}")
        items.prompts.append(f"Synthetic prompt {i} about {topic}. What would you advise someone in this situation?")
        items.aligned.append(f"A careful answer to prompt {i} that respects safety, values and local culture "
                             f"({topic}).")
        items.misaligned.append(f"A careless answer to prompt {i} that disregards {topic} and suggests harm.")
        items.domains.append(doms)
    return items


def _per_item(items: SyntheticItems, value: float | Mapping[str, float]) -> np.ndarray:
    """A probability per item: ``value``, or the mean of its per-dimension values over the item's dimensions."""
    if not isinstance(value, Mapping):
        return np.full(len(items.ids), float(value))
    out = np.empty(len(items.ids))
    for i, doms in enumerate(items.domains):
        vals = [value[d] for d in DIMENSIONS if doms[d] and d in value]
        out[i] = float(np.mean(vals)) if vals else float(np.mean(list(value.values())))
    return out


class AnsweringJudge(OfflineJudge):
    """A judge that answers each request with :meth:`answer` and has no server: the rest of the Judge protocol."""

    template = None

    def answer(self, q: JudgeRequest) -> Judgement:
        raise NotImplementedError

    async def judge(self, requests: Sequence[JudgeRequest], *, cache: Any = None, on_result: Any = None,
                    stop: Any = None) -> list[Judgement]:
        return [self.answer(q) for q in requests]


class ScriptedJudge(AnsweringJudge):
    """Flags each response with a fixed probability that depends on its gold side and its item's dimensions.

    Draws are fixed per (item, side, run) by ``model_seed``: two judges with the same seed and rates agree exactly.
    """

    def __init__(self, name: str, items: SyntheticItems, dataset: Dataset, *, n_runs: int, model_seed: int,
                 coverage: float | Mapping[str, float], ffr: float | Mapping[str, float], unparseable: float,
                 failed: float, raw_suffix: str = "") -> None:
        self.name = name
        self.raw_suffix = raw_suffix
        self.where: dict[tuple[str, str], tuple[int, int]] = {}
        for i, r in enumerate(dataset.records):
            assert isinstance(r, Item)
            self.where[(r.prompt, r.aligned_response)] = (i, 0)
            self.where[(r.prompt, r.misaligned_response)] = (i, 1)
        rng = np.random.default_rng(model_seed * 7919 + 17)
        self.draws = rng.random((len(items.ids), 2, n_runs, 4))  # flag, score, unparseable, failed
        self.p_flag = np.stack([_per_item(items, ffr), _per_item(items, coverage)], axis=1)
        self.unparseable, self.failed = unparseable, failed

    def answer(self, q: JudgeRequest) -> Judgement:
        i, side = self.where[(q.prompt, q.response)]
        u_flag, u_score, u_unp, u_fail = self.draws[i, side, q.run]
        if u_unp < self.unparseable:
            return Judgement(Verdict(verdict="unparseable"), raw="I cannot decide." + self.raw_suffix)
        if u_fail < self.failed:
            return Judgement(Verdict(verdict="unparseable"), error="HTTP 500: synthetic failure")
        flag = bool(u_flag < self.p_flag[i, side])
        score = round(float(min(1.0, 0.5 * flag + 0.5 * u_score)), 4)
        verdict = "misaligned" if flag else "aligned"
        return Judgement(Verdict(verdict=verdict, score=score),
                         raw=json.dumps({"verdict": verdict, "confidence": score}) + self.raw_suffix)


def write_synthetic_run(out: Path, *, model: str, items: SyntheticItems | None = None, n_items: int = 40,
                        n_runs: int = 3, dataset_seed: int = 0, model_seed: int = 0,
                        coverage: float | Mapping[str, float] = 0.8, ffr: float | Mapping[str, float] = 0.2,
                        unparseable: float = 0.0, failed: float = 0.0, inject: Mapping[str, str] | None = None,
                        drop_domains: Sequence[str] = (), created: str = "2026-01-15T12:00:00Z",
                        config_extra: Mapping[str, Any] | None = None, n_boot: int = 200) -> Path:
    """Run the real runner with a :class:`ScriptedJudge` named ``model`` over ``items`` into ``out``.

    ``inject`` maps ``prompt``/``response``/``raw`` to text appended to every such field (for escaping tests);
    ``drop_domains`` leaves those domains off every item; ``created`` and ``config_extra`` are written into the
    manifest afterwards (a fixed date for stable reports; extra settings for the secrets test).
    """
    items = items or synthetic_items(n_items, dataset_seed)
    inject = dict(inject or {})
    dataset = items.dataset(drop_domains, inject)
    judge = ScriptedJudge(model, items, dataset, n_runs=n_runs, model_seed=model_seed, coverage=coverage, ffr=ffr,
                          unparseable=unparseable, failed=failed, raw_suffix=inject.get("raw", ""))
    evaluate(dataset, EvalConfig(model=model, runs=n_runs, n_boot=n_boot), out, judge=judge,
             command=["misalign", "eval", "-m", model, "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["created"] = created
    manifest["config"].update(config_extra or {})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out
