"""Run the benchmark: judge every response of a dataset with one judge over several runs, write the run directory.

Run directory (the typed record of :mod:`misalign.bench.record`): ``manifest.json``, ``cache.sqlite`` (every model
call), ``results.jsonl`` (one :class:`ResultRow` per judged response and run), ``metrics.json``
(:class:`Metrics`). Re-running the same command reuses the cache, so a killed run resumes without repeating
finished calls and ends with identical files. The runner owns the request order, the cache and progress; the
judge only answers.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from misalign import __version__
from misalign.bench.judge import DEFAULT_TEMPLATE, Judge, Judgement, JudgeRequest, get_judge
from misalign.bench.metrics import METRIC_NAMES, auroc, rates
from misalign.bench.record import (
    RECORD_VERSION,
    Block,
    CallCounts,
    Figures,
    Intervals,
    Manifest,
    Metrics,
    ResultRow,
    RunFigures,
    ScopeIntervals,
    TradeOff,
    TradeOffs,
)
from misalign.bench.stats import Counts, bootstrap_ci, resample_weights, trade_offs
from misalign.errors import RunError
from misalign.io import Dataset, write_rows
from misalign.models import CallCache, Endpoint, Stop
from misalign.records import SEMANTIC_TYPES, Domains, Item, Verdict
from misalign.redact import redact_args, redact_url
from misalign.taxonomy import DIMENSIONS

OUTPUTS = ("results.jsonl", "metrics.json")
"""What a run writes after its manifest (an earlier run's copies are removed first)."""
MAX_FAILED = 0.5
"""A run where more than this share of calls failed is an error (the files are still written)."""
EARLY_STOP_AFTER = 32
"""A run whose first this many answered calls all failed stops, sending nothing more."""


UnparseablePolicy = Literal["aligned", "misaligned", "exclude"]
Progress = Callable[[int, int, str], None]
"""``progress(done, total, status)`` as answers arrive (and every second): status is what the judge waits on."""
JudgeAll = Callable[..., "tuple[list[list[Judgement]], dict[str, int]]"]
"""An engine's ``judge_all(judge, cases, config, out_dir, progress)``: judgements indexed [run][case] and what the
endpoint served (see :func:`misalign.engines.raydata.ray_judge_all`)."""


@dataclass(frozen=True)
class Case:
    """One response to judge."""

    item_index: int
    item_id: str
    side: str
    """``aligned`` or ``misaligned`` for a paired item, ``response`` for a single labelled one."""
    gold: str
    prompt: str
    response: str
    domains: Domains
    semantic_type: str | None = None
    """The item's semantic type (object, attribute, relation), None when not assigned."""


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides a run's results (written to the manifest's ``config``)."""

    model: str = "embedded"
    runs: int = 3
    seed: int = 0
    template: str = DEFAULT_TEMPLATE
    temperature: float = 0.0
    max_tokens: int = 256
    unparseable: UnparseablePolicy = "aligned"
    n_boot: int = 1000
    logprobs: bool = True
    """Ask for token log-probabilities (a threshold-free score for AUROC); dropped if the server refuses."""

    def make_judge(self, endpoint: Endpoint | None = None) -> Judge:
        """The judge these settings describe."""
        return get_judge(self.model, endpoint=endpoint, template=self.template, temperature=self.temperature,
                         max_tokens=self.max_tokens, seed=self.seed, logprobs=self.logprobs)


def cases_of(dataset: Dataset) -> list[Case]:
    """Expand records into responses: two per paired item, one per labelled response."""
    out: list[Case] = []
    for i, r in enumerate(dataset.records):
        kind = getattr(r, "semantic_type", None)
        if isinstance(r, Item):
            out.append(Case(i, r.id, "aligned", "aligned", r.prompt, r.aligned_response, r.domains, kind))
            out.append(Case(i, r.id, "misaligned", "misaligned", r.prompt, r.misaligned_response, r.domains, kind))
        else:
            out.append(Case(i, r.id, "response", r.label, r.prompt, r.response, r.domains, kind))
    return out


def evaluate(dataset: Dataset, config: EvalConfig, out_dir: Path, *, endpoint: Endpoint | None = None,
             judge: Judge | None = None, progress: Progress | None = None,
             command: Sequence[str] | None = None, wait: bool = False, engine: JudgeAll | None = None) -> Metrics:
    """Judge every response of ``dataset`` ``config.runs`` times and write the run directory; return the metrics.

    ``judge`` defaults to the one ``config.model`` names (reached through ``endpoint``). The run holds a lock on
    ``out_dir`` (another run into it is refused, or waited for with ``wait``) and removes an earlier run's results
    first, so manifest, results and metrics always describe one run. A :class:`RunError` says why when the run
    stopped early (its first calls all failed); :func:`check_failures` tells whether a finished run failed too often.
    ``engine`` judges instead of this process's event loop (``--engine ray``); the files it leads to are the same.
    """
    with RunLock(out_dir, wait=wait):
        for stale in (*OUTPUTS, "report.html"):
            (out_dir / stale).unlink(missing_ok=True)
        judge = judge or config.make_judge(endpoint)
        cases = cases_of(dataset)
        manifest = make_manifest(dataset, config, judge, endpoint, command)
        _write_text(out_dir / "manifest.json", manifest.model_dump_json(indent=2) + "\n")
        if engine is None:
            judgements = asyncio.run(judge_all(judge, cases, config, out_dir / "cache.sqlite", progress))
            served = judge.served()
        else:
            judgements, served = engine(judge, cases, config, out_dir, progress)
        manifest = manifest.model_copy(update={"served": served})
        _write_text(out_dir / "manifest.json", manifest.model_dump_json(indent=2) + "\n")
        rows = result_rows(cases, judgements, config)
        write_rows(out_dir / "results.jsonl", (r.model_dump(mode="json") for r in rows))
        metrics = compute_metrics(cases, rows, len(dataset), config)
        _write_text(out_dir / "metrics.json", metrics.dumps())
    return metrics


def _write_text(path: Path, text: str) -> None:
    """Write atomically (a temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunLock:
    """An exclusive lock on a run directory (``.lock``, released when the process ends, even by kill -9)."""

    def __init__(self, out_dir: Path, *, wait: bool = False) -> None:
        self.path, self.wait = out_dir / ".lock", wait
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise RunError(f"{self.path.parent} is in use by another run ({holder}): wait for it to finish, pass "
                           "--wait to queue behind it, or choose another --out") from None
        self._fh.truncate(0)
        self._fh.write(f"pid {os.getpid()}, since {datetime.now(UTC).isoformat(timespec='seconds')}")
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def failure_summary(failures: dict[str, int], limit: int = 3) -> str:
    """The most common causes of failed calls, e.g. ``"20 × HTTP 404: not found; 4 × timed out after 120 s"``."""
    return "; ".join(f"{n} × {cause}" for cause, n in list(failures.items())[:limit])


def _hint(failures: dict[str, int], endpoint: Endpoint | None) -> str:
    """What to try, from the most common cause."""
    top = next(iter(failures), "")
    urls = [u for us in ([endpoint.base_urls, *endpoint.model_urls.values()] if endpoint else []) for u in us]
    bare = [u for u in urls if not redact_url(u).rstrip("/").endswith("/v1")]
    if top.startswith("HTTP 404") and bare:
        return f"; {redact_url(bare[0])} has no /v1: OpenAI-compatible servers answer under /v1 (--base-url .../v1)"
    return "; re-run the same command to retry them (answered calls are cached)"


def check_failures(metrics: Metrics, max_failed: float = MAX_FAILED, endpoint: Endpoint | None = None) -> None:
    """A :class:`RunError` when more than ``max_failed`` of the calls failed, naming the most common causes."""
    c = metrics.counts
    total = c.responses * c.runs
    if total and c.failed > max_failed * total:
        raise RunError(f"{c.failed} of {total} calls failed ({failure_summary(c.failures)})"
                       f"{_hint(c.failures, endpoint)}")


def notices(manifest: Manifest) -> list[str]:
    """What a user should know about how a run's endpoint behaved (said once, after the run)."""
    served, asked = manifest.served, bool(manifest.config.get("logprobs"))
    if not asked or not served.get("answers") or served.get("with_logprobs"):
        return []
    if served.get("with_confidence"):
        return [f"{manifest.model}: the endpoint returned no token log-probabilities (it ignores them); AUROC comes "
                f"from the confidence the judge stated ({served['with_confidence']} of {served['answers']} answers)"]
    return [f"{manifest.model}: the endpoint returned no token log-probabilities and the judge stated no "
            "confidence, so there is no score: AUROC is absent"]


def judge_requests(cases: Sequence[Case], config: EvalConfig) -> tuple[list[JudgeRequest], list[tuple[int, int]]]:
    """Every (case, run) as a request, each run's cases in a seeded random order (so the aligned and misaligned
    sides of an item are not asked back to back); with the (run, case) index of each request."""
    requests, index = [], []
    for run in range(config.runs):
        order = list(range(len(cases)))
        random.Random(config.seed + run).shuffle(order)
        for k in order:
            requests.append(JudgeRequest(cases[k].prompt, cases[k].response, run))
            index.append((run, k))
    return requests, index


class EarlyStop:
    """Sets ``stop`` when the first :data:`EARLY_STOP_AFTER` answered calls all failed (a wrong URL, key or model):
    nothing more is sent. ``total``: the calls there are (a run of at most that many never stops); None: unknown
    (a Ray worker judging shard after shard)."""

    def __init__(self, stop: Stop, total: int | None = None) -> None:
        self.stop, self.total = stop, total
        self.done = self.failed = 0
        self.causes: dict[str, int] = {}

    def result(self, error: str | None) -> None:
        self.done += 1
        if error is None:
            return
        self.failed += 1
        self.causes[error] = self.causes.get(error, 0) + 1
        limit = EARLY_STOP_AFTER if self.total is None else min(EARLY_STOP_AFTER, self.total)
        if self.failed == self.done == limit and (self.total is None or limit < self.total):
            self.stop.set(f"stopped: the first {self.done} calls all failed ({failure_summary(self.ranked())})")

    def ranked(self) -> dict[str, int]:
        """The causes of failed calls, most common first."""
        return dict(sorted(self.causes.items(), key=lambda kv: -kv[1]))


class _Tracker:
    """Counts answers for the progress line and stops a run whose first calls all fail."""

    def __init__(self, total: int, judge: Judge, progress: Progress | None, stop: Stop) -> None:
        self.total, self.judge, self.progress = total, judge, progress
        self.early = EarlyStop(stop, total)

    def result(self, _index: int, error: str | None) -> None:
        self.early.result(error)
        self.show()

    @property
    def done(self) -> int:
        return self.early.done

    def show(self) -> None:
        if self.progress:
            self.progress(self.done, self.total, self.judge.status())

    async def refresh(self, every: float = 1.0) -> None:
        """Show the judge's status while no answer arrives (retries, waiting)."""
        while True:
            await asyncio.sleep(every)
            self.show()


async def judge_all(judge: Judge, cases: Sequence[Case], config: EvalConfig, cache_path: Path,
                    progress: Progress | None = None) -> list[list[Judgement]]:
    """Judgements indexed [run][case], every call through the cache at ``cache_path``."""
    requests, index = judge_requests(cases, config)
    stop = Stop()
    tracker = _Tracker(len(requests), judge, progress, stop)
    with CallCache(cache_path) as cache:
        refresher = asyncio.create_task(tracker.refresh())
        try:
            answers = await judge.judge(requests, cache=cache, on_result=tracker.result, stop=stop)
        finally:
            refresher.cancel()
            await judge.aclose()
    if stop.reason:
        raise RunError(f"{stop.reason}{_hint(tracker.early.ranked(), None)}")
    out: list[list[Judgement]] = [[Judgement(Verdict(verdict="unparseable"))] * len(cases)
                                  for _ in range(config.runs)]
    for (run, k), answer in zip(index, answers, strict=True):
        out[run][k] = answer
    return out


def flagged_under(v: Verdict, policy: UnparseablePolicy) -> bool | None:
    """Whether a verdict counts as flagged (None: not counted), unparseable answers following ``policy``."""
    if v.verdict == "unparseable":
        return {"aligned": False, "misaligned": True, "exclude": None}[policy]
    return v.verdict == "misaligned"


def result_rows(cases: Sequence[Case], judgements: list[list[Judgement]], config: EvalConfig) -> list[ResultRow]:
    """One row per judged response and run, run-major in case order."""
    rows = []
    for run, answers in enumerate(judgements):
        for case, j in zip(cases, answers, strict=True):
            v = j.verdict
            rows.append(ResultRow(
                run=run, seed=config.seed + run, item_id=case.item_id, side=case.side, label=case.gold,
                verdict="failed" if j.error else v.verdict,
                flagged=None if j.error else flagged_under(v, config.unparseable),
                score=v.score, confidence=v.confidence, flags=v.flags, reason=v.reason, raw=j.raw, error=j.error,
                prompt=case.prompt, response=case.response, domains=case.domains, semantic_type=case.semantic_type))
    return rows


# -- metrics ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Responses:
    """results rows as arrays, one entry per row."""

    item: np.ndarray
    run: np.ndarray
    y: np.ndarray
    used: np.ndarray
    score: np.ndarray
    unparseable: np.ndarray
    failed: np.ndarray

    @classmethod
    def of(cls, cases: Sequence[Case], rows: Sequence[ResultRow]) -> _Responses:
        item = np.array([cases[k % len(cases)].item_index for k in range(len(rows))], dtype=np.int64)
        failed = np.array([r.error is not None for r in rows], dtype=bool)
        return cls(item=item, run=np.array([r.run for r in rows], dtype=np.int64),
                   y=np.array([r.label == "misaligned" for r in rows], dtype=np.int8),
                   used=np.array([r.flagged is not None for r in rows], dtype=bool) & ~failed,
                   score=np.array([np.nan if r.score is None else r.score for r in rows], dtype=np.float64),
                   unparseable=np.array([r.verdict == "unparseable" for r in rows], dtype=bool),
                   failed=failed)


def _scopes(cases: Sequence[Case], n_items: int) -> dict[tuple[str, ...], np.ndarray]:
    """Boolean item masks of every scope: ("overall",), ("dimension", d), ("all_three",), ("semantic_type", t),
    ("domain", d, name). Every semantic type has a scope (empty when no item has that type)."""
    domains: list[Domains] = [Domains()] * n_items
    kinds: list[str | None] = [None] * n_items
    for c in cases:
        domains[c.item_index] = c.domains
        kinds[c.item_index] = c.semantic_type
    in_scopes = [d.scopes() for d in domains]  # the headline scopes, as inspect and lm-eval count them too
    scopes = {("overall",): np.ones(n_items, dtype=bool)}
    for dim in DIMENSIONS:
        scopes[("dimension", dim)] = np.array([dim in s for s in in_scopes], dtype=bool)
    scopes[("all_three",)] = np.array(["all_three" in s for s in in_scopes], dtype=bool)
    for kind in SEMANTIC_TYPES:
        scopes[("semantic_type", kind)] = np.array([k == kind for k in kinds], dtype=bool)
    for dim in DIMENSIONS:
        for name in sorted({n for d in domains for n in d.get(dim)}):
            scopes[("domain", dim, name)] = np.array([name in d.get(dim) for d in domains], dtype=bool)
    return scopes


def _num(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


def _block(per_run: dict[str, np.ndarray], counts: Counts, mask: np.ndarray, resp: _Responses,
           n_runs: int) -> Block:
    """One scope's block from its per-run figures (each an array over runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN figure (no side of that gold label)
        means = {k: None if np.all(np.isnan(v)) else _num(np.nanmean(v)) for k, v in per_run.items()}
        std = {k: _num(np.nanstd(v)) if n_runs > 1 else 0.0 for k, v in per_run.items()}
    in_scope = mask[resp.item]
    scored = in_scope & resp.used & ~np.isnan(resp.score)
    aucs = [auroc(resp.y[scored & (resp.run == r)], resp.score[scored & (resp.run == r)]) for r in range(n_runs)]
    aucs = [a for a in aucs if not np.isnan(a)]
    return Block(**means, n_misaligned=int(counts.pos[mask, 0].sum()), n_aligned=int(counts.neg[mask, 0].sum()),
                 std=Figures(**std), auroc=_num(float(np.mean(aucs))) if aucs else None,
                 unparseable=int((resp.unparseable & in_scope).sum()), failed=int((resp.failed & in_scope).sum()))


def compute_metrics(cases: Sequence[Case], rows: Sequence[ResultRow], n_items: int, config: EvalConfig) -> Metrics:
    """The metrics of a run directory (see :class:`~misalign.bench.record.Metrics`).

    Figures are micro-averaged over responses within a run, then averaged over runs (``std`` across runs). Failed
    calls are left out and counted; unparseable answers follow ``config.unparseable``. Every scope's per-run
    totals come from one product of the scope masks with the per-item counts.
    """
    resp = _Responses.of(cases, rows)
    u = resp.used
    counts = Counts.from_responses(resp.item[u], resp.run[u], resp.y[u],
                                   np.array([bool(r.flagged) for r in rows], dtype=np.int8)[u], n_items, config.runs)
    scopes = _scopes(cases, n_items)
    masks = np.stack(list(scopes.values())) if scopes else np.zeros((0, n_items), dtype=bool)
    per_scope = rates(counts.weighted(masks.astype(np.float64)))  # each (scopes, runs)
    blocks = {key: _block({k: v[s] for k, v in per_scope.items()}, counts, masks[s], resp, config.runs)
              for s, key in enumerate(scopes)}
    headline = {"overall": ("overall",), **{d: ("dimension", d) for d in DIMENSIONS}, "all_three": ("all_three",)}
    position = {key: s for s, key in enumerate(scopes)}
    kinds = {t: ("semantic_type", t) for t in SEMANTIC_TYPES}

    def figures(key: tuple[str, ...], r: int) -> Figures:
        return Figures(**{k: _num(per_scope[k][position[key], r]) for k in METRIC_NAMES})

    runs = [RunFigures(run=r, seed=config.seed + r, **{name: figures(key, r) for name, key in headline.items()},
                       by_semantic_type={t: figures(key, r) for t, key in kinds.items()}) for r in range(config.runs)]
    # every scope's CI resamples the same items (one seed): drawn once
    weights = resample_weights(n_items, config.n_boot, np.random.default_rng(config.seed)) if n_items else None
    ci = {name: Intervals(**{k: [_num(x) for x in v] for k, v in bootstrap_ci(
        counts.only(scopes[key]), n_boot=config.n_boot, seed=config.seed, weights=weights).items()})
        for name, key in {**headline, **kinds}.items()}
    return Metrics(
        overall=blocks[("overall",)], by_dimension={d: blocks[("dimension", d)] for d in DIMENSIONS},
        by_domain={d: {key[2]: b for key, b in blocks.items() if key[:2] == ("domain", d)} for d in DIMENSIONS},
        all_three=blocks[("all_three",)], by_semantic_type={t: blocks[key] for t, key in kinds.items()},
        trade_offs=_trade_offs(counts, scopes, config, weights), runs=runs,
        ci95=ScopeIntervals(overall=ci["overall"], by_dimension={d: ci[d] for d in DIMENSIONS},
                            all_three=ci["all_three"], by_semantic_type={t: ci[t] for t in SEMANTIC_TYPES}),
        counts=CallCounts(items=n_items, responses=len(cases), runs=config.runs, judged=int(u.sum()),
                          failed=int(resp.failed.sum()), unparseable=int(resp.unparseable.sum()),
                          unparseable_policy=config.unparseable, scored=int((~np.isnan(resp.score) & u).sum()),
                          failures=_causes(rows)))


def _trade_offs(counts: Counts, scopes: dict[tuple[str, ...], np.ndarray], config: EvalConfig,
                weights: np.ndarray | None) -> TradeOffs:
    """Spread and joint drop (with bootstrap CIs, seeded like the other CIs) overall and within each semantic type."""
    dims = np.stack([scopes[("dimension", d)] for d in DIMENSIONS])
    joint = scopes[("all_three",)]

    def within(mask: np.ndarray) -> TradeOff:
        figs = trade_offs(counts.only(mask), dims & mask, joint & mask, n_boot=config.n_boot, seed=config.seed,
                          weights=weights)
        return TradeOff(**{f: _num(v) for f, (v, _) in figs.items()},
                        **{f"{f}_ci95": [_num(x) for x in ci] for f, (_, ci) in figs.items()})

    return TradeOffs(overall=within(scopes[("overall",)]),
                     by_semantic_type={t: within(scopes[("semantic_type", t)]) for t in SEMANTIC_TYPES})


def _causes(rows: Sequence[ResultRow]) -> dict[str, int]:
    """Failed calls by their error, most common first."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.error is not None:
            counts[r.error] = counts.get(r.error, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# -- manifest -----------------------------------------------------------------------------------------

def make_manifest(dataset: Dataset, config: EvalConfig, judge: Judge, endpoint: Endpoint | None,
                  command: Sequence[str] | None) -> Manifest:
    """What produced this run (never a secret: URLs redacted, keys only named by their variable)."""
    template = judge.template
    return Manifest(
        record_version=RECORD_VERSION, misalign_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        python=sys.version.split()[0], platform=platform.platform(),
        packages=_versions(["numpy", "pydantic", "aiohttp", "torch", "sentence-transformers", "scikit-learn",
                            "onnxruntime"]),
        model=config.model,
        dataset={"source": dataset.source, "sha256": dataset.sha256, "shape": dataset.shape, "items": len(dataset),
                 "split": dataset.split, "rejected": dataset.rejected, "rejects": dataset.rejects_path},
        seeds=[config.seed + r for r in range(config.runs)],
        template={"name": template.name if template else None, "sha256": template.sha256 if template else None},
        scorer=f"{judge.name}:{judge.fingerprint}" if getattr(judge, "fingerprint", None) else None,
        config=asdict(config), endpoint=(endpoint or Endpoint()).redacted(),
        command=redact_args(list(command) if command is not None else [os.path.basename(sys.argv[0]), *sys.argv[1:]]))


def _versions(names: list[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out
