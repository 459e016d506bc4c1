"""Loading run directories for the report: the validated run record (:func:`misalign.bench.record.load_run`) and
(once, as arrays) results.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np

from misalign.bench.record import Block, DatasetRef, Intervals, Manifest, Metrics, ResultRow
from misalign.bench.record import load_run as load_record

SIDES = {"aligned": 0, "misaligned": 1, "response": 2}
"""Side codes; a response is keyed by ``item * 3 + side``."""
SIDE_NAMES = {v: k for k, v in SIDES.items()}
_FLAG_CODE = {True: 1, False: 0, None: -1}


@dataclass
class Results:
    """results.jsonl as arrays (one entry per judged response and run) plus the rows needed as examples."""

    item_ids: list[str]
    """Distinct item ids in first-seen order; ``item`` indexes this list."""
    item: np.ndarray
    run: np.ndarray
    side: np.ndarray
    y: np.ndarray
    """1 when the gold label is misaligned."""
    flag: np.ndarray
    """1 flagged, 0 not flagged, -1 no flag (failed call or excluded unparseable answer)."""
    used: np.ndarray
    """Counted in the metrics: no error and a flag."""
    wrong_lines: list[bytes]
    """Raw lines of run 0 whose verdict differs from the gold label: examples, parsed only when shown."""
    _blob: bytes | None = field(default=None, repr=False)
    _starts: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_runs(self) -> int:
        return int(self.run.max()) + 1 if self.run.size else 0

    def wrong_in_domain(self, dim: str, name: str, limit: int = 5) -> tuple[int, list[dict[str, Any]]]:
        """How many wrong run-0 answers carry domain ``name`` of ``dim``, and the first ``limit`` of them."""
        if self._blob is None:  # all wrong lines, lower-cased, one per line: searched instead of parsed
            self._blob = b"\n".join(self.wrong_lines).lower()
            self._starts = np.cumsum([0] + [len(x) + 1 for x in self.wrong_lines[:-1]], dtype=np.int64)
        key = name.casefold()
        candidates: set[int] = set()
        for needle in {name.encode("utf-8").lower(), json.dumps(name)[1:-1].encode("ascii").lower()}:
            at = self._blob.find(needle)
            while at != -1:
                candidates.add(int(np.searchsorted(self._starts, at, side="right")) - 1)
                at = self._blob.find(needle, at + 1)
        n, rows = 0, []
        for k in sorted(candidates):
            row = json.loads(self.wrong_lines[k])
            doms = row.get("domains") if isinstance(row, dict) else None
            names = doms.get(dim) if isinstance(doms, dict) else None
            if isinstance(names, list) and any(isinstance(x, str) and x.casefold() == key for x in names):
                n += 1
                if len(rows) < limit:
                    rows.append(row)
        return n, rows


@dataclass
class Run:
    """One run directory: its validated record and its place in the report."""

    path: Path
    manifest: Manifest
    metrics: Metrics
    name: str = ""
    """Display name, unique within the report (the model, disambiguated by directory when needed)."""
    rank: int = 0
    """1-based position in the leaderboard."""
    results: Results | None = None
    results_error: str | None = None
    """Why results could not be read, when they could not."""

    @property
    def model(self) -> str:
        return self.manifest.model or self.path.name

    @property
    def dataset(self) -> DatasetRef:
        return self.manifest.dataset

    @property
    def dataset_key(self) -> tuple[str, str] | None:
        """(sha256, split) shared by runs over the same items; None when the manifest has no sha256."""
        sha = self.dataset.sha256
        return (sha, str(self.dataset.split)) if sha else None

    def block(self, scope: str, dim: str | None = None) -> Block | None:
        """The block of ``overall``, ``all_three`` or (with ``dim``, a dimension or a semantic type)
        ``by_dimension`` or ``by_semantic_type``; None when absent."""
        if scope in ("by_dimension", "by_semantic_type"):
            return getattr(self.metrics, scope).get(dim or "")
        return getattr(self.metrics, scope)

    def ci(self, scope: str, dim: str | None = None) -> Intervals | None:
        """The 95% intervals of a headline scope (as :meth:`block`); None when absent."""
        if scope in ("by_dimension", "by_semantic_type"):
            return getattr(self.metrics.ci95, scope).get(dim or "")
        return getattr(self.metrics.ci95, scope)

    @property
    def typed(self) -> bool:
        """Whether any judged item of this run has a semantic type."""
        return any(b.n > 0 for b in self.metrics.by_semantic_type.values())

    def domains(self, dim: str) -> dict[str, Block]:
        """The per-domain blocks of one dimension."""
        return self.metrics.by_domain.get(dim, {})


def fig(block: Block | None, name: str) -> float | None:
    """A metric of a block as a finite float, or None when the block or the value is missing."""
    v = block.figure(name) if block is not None else None
    return float(v) if v is not None and np.isfinite(v) else None


def fig_pair(intervals: Intervals | None, name: str) -> tuple[float, float] | None:
    """The [lo, hi] interval of metric ``name``, or None when missing or undefined."""
    v = getattr(intervals, name) if intervals is not None else None
    if v is None or len(v) != 2 or any(x is None or not np.isfinite(x) for x in v):
        return None
    return float(v[0]), float(v[1])


def load_run(path: Path) -> Run:
    """Read and validate a run directory's record; ValueError naming the file and field of a problem."""
    manifest, metrics = load_record(Path(path))
    return Run(path=Path(path), manifest=manifest, metrics=metrics)


def read_results(path: Path, data: bytes | None = None) -> Results:
    """Parse results.jsonl (or ``data``, its bytes, named ``path`` in errors) once into arrays; keep only run 0's
    wrong lines (for examples).

    Uses pyarrow's multi-threaded JSON reader on the few columns needed (about 10x faster than ``json``), and
    falls back to the standard library where pyarrow cannot read the file (unusual types, very long lines).
    """
    data = path.read_bytes() if data is None else data
    return _read_arrow(data) or _read_python(path, data)


def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the non-blank lines of ``data`` (memchr via bytes.find beats a numpy scan)."""
    nl = []
    find, at = data.find, data.find(b"\n")
    while at != -1:
        nl.append(at)
        at = find(b"\n", at + 1)
    ends = np.array([*nl, len(data)], dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    keep = ends > starts
    for k in np.flatnonzero(keep & (ends - starts <= 8)):  # short lines may hold only "\r" or spaces
        keep[k] = bool(data[starts[k]:ends[k]].strip())
    return starts[keep], ends[keep]


RESULT_COLUMNS = ("run", "item_id", "side", "label", "verdict", "flagged", "error")
"""The results.jsonl columns the report reads."""


def _python_type(ann: Any) -> type:
    """The plain type behind an annotation: ``str`` for literals, the first non-None member of a union."""
    if get_origin(ann) is Literal:
        return str
    members = [t for t in get_args(ann) if t is not type(None)]
    return _python_type(members[0]) if members else ann


def results_schema(pa: Any) -> Any:
    """The Arrow schema of :data:`RESULT_COLUMNS`, typed from :class:`misalign.bench.record.ResultRow`."""
    kinds = {int: pa.int64(), bool: pa.bool_(), float: pa.float64(), str: pa.string()}
    fields = []
    for name in RESULT_COLUMNS:
        fields.append((name, kinds[_python_type(ResultRow.model_fields[name].annotation)]))
    return pa.schema(fields)


def _read_arrow(data: bytes) -> Results | None:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return None
    schema = results_schema(pa)
    try:
        tab = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=8 << 20),
                           parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowException, ValueError, TypeError):
        return None
    starts, ends = _line_spans(data)
    if tab.num_rows != starts.size:
        return None
    ids = pc.fill_null(tab["item_id"], "None").combine_chunks().dictionary_encode()
    run = pc.fill_null(tab["run"], 0).to_numpy().astype(np.int64)
    side = pc.fill_null(pc.index_in(tab["side"], value_set=pa.array(list(SIDES))), 2).to_numpy().astype(np.int8)
    y = pc.fill_null(pc.equal(tab["label"], "misaligned"), False).to_numpy(zero_copy_only=False).astype(np.int8)
    flagged = tab["flagged"]
    flag = pc.fill_null(pc.cast(flagged, pa.int8()), -1).to_numpy().astype(np.int8)
    ok = pc.is_null(tab["error"]).to_numpy(zero_copy_only=False)
    right = pc.fill_null(pc.equal(tab["verdict"], tab["label"]), False).to_numpy(zero_copy_only=False)
    wrong = [data[starts[k]:ends[k]].rstrip(b"\r") for k in np.flatnonzero((run == 0) & ~right)]
    return Results(item_ids=ids.dictionary.to_pylist(), item=ids.indices.to_numpy().astype(np.int64), run=run,
                   side=side, y=y, flag=flag, used=ok & (flag >= 0), wrong_lines=wrong)


def _read_python(path: Path, data: bytes) -> Results:
    lines = [ln for ln in data.splitlines() if ln.strip()]
    try:  # one parse of the whole file is faster than a json.loads per line
        rows = json.loads(b"[" + b",".join(lines) + b"]")
    except json.JSONDecodeError:
        for i, ln in enumerate(data.splitlines(), 1):
            if ln.strip():
                try:
                    json.loads(ln)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        raise ValueError(f"{path}: not valid JSON Lines") from None
    n = len(rows)
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: every line must be a JSON object")
    ids = [str(r.get("item_id")) for r in rows]
    index: dict[str, int] = {}
    for i in ids:
        if i not in index:
            index[i] = len(index)
    item = np.fromiter((index[i] for i in ids), dtype=np.int64, count=n)
    run = np.fromiter((int(r.get("run") or 0) for r in rows), dtype=np.int64, count=n)
    side = np.fromiter((SIDES.get(r.get("side"), 2) for r in rows), dtype=np.int8, count=n)
    y = np.fromiter((r.get("label") == "misaligned" for r in rows), dtype=np.int8, count=n)
    flag = np.fromiter((_FLAG_CODE.get(r.get("flagged"), -1) for r in rows), dtype=np.int8, count=n)
    ok = np.fromiter((r.get("error") is None for r in rows), dtype=bool, count=n)
    right = np.fromiter((r.get("verdict") == r.get("label") for r in rows), dtype=bool, count=n)
    wrong = [lines[k] for k in np.flatnonzero((run == 0) & ~right)]
    return Results(item_ids=list(index), item=item, run=run, side=side, y=y, flag=flag, used=ok & (flag >= 0),
                   wrong_lines=wrong)


def load_results(run: Run) -> None:
    """Attach ``run.results`` (or ``run.results_error`` saying why there are none)."""
    path = run.path / "results.jsonl"
    if not path.is_file():
        run.results_error = "no results.jsonl"
        return
    try:
        run.results = read_results(path)
    except (ValueError, OSError) as exc:
        run.results_error = str(exc)


def assign_names(runs: list[Run]) -> None:
    """Unique display names: the model, plus the directory name (then a number) where models repeat."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.model] = counts.get(r.model, 0) + 1
    seen: set[str] = set()
    for r in runs:
        name = r.model if counts[r.model] == 1 else f"{r.model} ({r.path.name})"
        base, k = name, 2
        while name in seen:
            name, k = f"{base} #{k}", k + 1
        seen.add(name)
        r.name = name


def sort_runs(runs: list[Run]) -> list[Run]:
    """Runs by overall Alignment Score, best first (runs without one last); sets ``rank``."""
    out = sorted(runs, key=lambda r: -(fig(r.block("overall"), "alignment_score") or -1.0))
    for i, r in enumerate(out, 1):
        r.rank = i
    return out
