"""Load datasets in the shapes users already have, and write them in our schema.

Shapes, detected from the columns of the first row (after the user's ``--map`` renames):

- ``misalign``: our schema (``prompt``, ``aligned_response``, ``misaligned_response``, ``domains``, ...).
- ``savacu``: the authors' release CSV layout: a prompt column, aligned/misaligned response columns and one
  domain column per dimension, with liberal column names.
- ``hh-rlhf``: preference pairs (``chosen``/``rejected`` dialogues); the last assistant turn is the response.
- ``labelled``: single responses (``prompt``, ``response``, ``label``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from pydantic import ValidationError

from misalign.io.formats import DataError, column_types, detect_format, iter_rows, write_rows
from misalign.io.labels import DEFAULT_LABELS, LabelWords, unknown_label_message
from misalign.records import SEMANTIC_TYPES, Domains, Item, LabelledResponse, Prompt
from misalign.taxonomy import DIMENSIONS, NO_DOMAIN_LABELS, Taxonomy

if TYPE_CHECKING:
    import pyarrow as pa

    from misalign.io.bulk import Rows

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "bundled"
Shape = Literal["misalign", "savacu", "hh-rlhf", "labelled"]
Record = Item | LabelledResponse
_Convert = Callable[[int, dict[str, Any]], Any]
"""Turns one (renamed) row, with its line number, into a record; raises :class:`DataError` if it cannot."""
_M = TypeVar("_M", Item, LabelledResponse, Prompt)

_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "item_id", "uid", "row_index", "index"),
    "prompt": ("prompt", "question", "instruction", "input", "query", "user_prompt", "user_input"),
    "aligned_response": ("aligned_response", "aligned", "aligned_answer", "aligned_output", "response_aligned",
                         "safe_response", "good_response", "chosen_response"),
    "misaligned_response": ("misaligned_response", "misaligned", "misaligned_answer", "misaligned_output",
                            "response_misaligned", "unaligned_response", "unsafe_response", "bad_response",
                            "rejected_response"),
    "response": ("response", "answer", "output", "completion"),
    "label": ("label", "gold", "gold_label", "target"),
    "split": ("split", "subset", "partition"),
    "semantic_type": ("semantic_type",),  # also "semantic-type", "Semantic Type": names are normalised
    "safety": ("safety", "safety_domain", "safety_domains", "safety_label", "safety_labels", "safety_category"),
    "value": ("value", "value_domain", "value_domains", "value_label", "value_labels", "values", "human_value"),
    "cultural": ("cultural", "cultural_domain", "cultural_domains", "cultural_label", "cultural_labels",
                 "culture", "culture_domain", "culture_domains"),
}
_SPLITS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
           "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_BULK = True
"""Whether loads use the bulk path for the files it covers (off: the per-row path alone, for comparisons)."""


Profile = tuple[str | None, str, str | None, tuple[tuple[str, ...], ...]]
"""What summaries count of a record: (split, label or ``"paired"``, semantic type, domain names per dimension)."""


def profile(record: Record) -> Profile:
    """The :data:`Profile` of one record."""
    labelled = isinstance(record, LabelledResponse)
    d = record.domains
    return (record.split, record.label if labelled else "paired", None if labelled else record.semantic_type,
            (tuple(d.safety), tuple(d.value), tuple(d.cultural)))


class Records(Sequence[Record]):
    """A load's records, built when first asked for: per index or slice, or all at once on first iteration.

    Each part is one file's: a list of records (read row by row) or :class:`misalign.io.bulk.Rows` (checked
    columns; every check ran at load time, so building cannot fail). Behaves as the list of the records: ``len``,
    indexing, slicing (a list), iteration, ``==``; a record once built is the same object on every access.
    Until one is built, :meth:`select`, :meth:`splits` and :meth:`tally` work on the columns.
    """

    def __init__(self, parts: Sequence[list[Record] | Rows]) -> None:
        self._parts = list(parts)
        self._starts = list(accumulate((len(p) for p in self._parts), initial=0))
        self._built: list[Record | None] = [None] * self._starts[-1]
        self._any = self._all = False

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...
    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        if isinstance(i, slice):
            return self._build(range(*i.indices(len(self))))
        n = len(self)
        if not -n <= i < n:
            raise IndexError("record index out of range")
        return self._build([i % n])[0]

    def __iter__(self) -> Iterator[Record]:
        if not self._all:
            self._build(range(len(self)))
            self._all = True
        return iter(self._built)  # type: ignore[arg-type]  # every one is built

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Records | list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, as a list is

    def __repr__(self) -> str:
        return f"Records({len(self)} records)"

    def _build(self, positions: Sequence[int]) -> list[Record]:
        """The records at ``positions``, building those not built yet."""
        built = self._built
        missing = [p for p in positions if built[p] is None]
        if missing:
            with _no_gc():  # as while loading: many objects, no cycles
                self._make(missing)
        return [built[p] for p in positions]  # type: ignore[misc]

    def _make(self, missing: list[int]) -> None:
        """Build the records at ``missing`` (ascending positions), a part at a time."""
        import numpy as np

        self._any = True
        at = np.asarray(missing, dtype=np.int64)
        part_of = np.searchsorted(self._starts, at, side="right") - 1
        for k in np.unique(part_of).tolist():
            where = at[part_of == k]
            part, local = self._parts[k], where - self._starts[k]
            if isinstance(part, list):
                made = [part[j] for j in local.tolist()]
            else:
                made = part.build(None if len(local) == len(part) else local)
            for p, rec in zip(where.tolist(), made, strict=True):
                self._built[p] = rec

    def _columns(self) -> bool:
        """Whether summaries may be read from the columns: no record was built yet (one built may be changed)."""
        return not self._any

    def select(self, split: str) -> Records:
        """The records of one split."""
        if not self._columns():
            return Records([[r for r in self if r.split == split]])
        return Records([[r for r in p if r.split == split] if isinstance(p, list) else p.select(split)
                        for p in self._parts])

    def splits(self) -> set[str]:
        """The splits the records are in."""
        if not self._columns():
            return {r.split for r in self if r.split}
        return set().union(*({r.split for r in p if r.split} if isinstance(p, list) else p.splits()
                             for p in self._parts))

    def tally(self) -> Counter[Profile]:
        """How many records have each :data:`Profile`."""
        if not self._columns():
            return Counter(map(profile, self))
        out: Counter[Profile] = Counter()
        for p in self._parts:
            out.update(Counter(map(profile, p)) if isinstance(p, list) else p.tally())
        return out


@dataclass
class Dataset:
    """Records loaded from one source, with where they came from and a content hash."""

    records: Sequence[Record]
    """The records: a :class:`Records` (built on first use) after a load, or any list of them."""
    source: str
    sha256: str
    shape: Shape
    rejected: int = 0
    """Rows skipped as malformed (``skip_bad``), written to :attr:`rejects_path`."""
    rejects_path: str | None = None
    splits_present: set[str] = field(default_factory=set)
    split: str = "all"
    """The split these records are: ``train``, ``validation``, ``test``, or ``all`` (the whole source, which is
    what :meth:`select` gives for a source without splits whatever split was asked for)."""

    @property
    def kind(self) -> Literal["paired", "labelled"]:
        return "labelled" if self.shape == "labelled" else "paired"

    def __len__(self) -> int:
        return len(self.records)

    def select(self, split: str | None) -> Dataset:
        """Records of one split; a dataset without splits is returned whole, with :attr:`split` ``"all"``."""
        if split is None or split == "all" or not self.splits_present:
            return replace(self, split="all")
        if split not in self.splits_present:
            raise DataError(self.source, None, None, f"no split {split!r}; it has {sorted(self.splits_present)}")
        records = self.records
        chosen = records.select(split) if isinstance(records, Records) else [r for r in records if r.split == split]
        return replace(self, records=chosen, splits_present={split}, split=split)

    def tally(self) -> Counter[Profile]:
        """How many records have each :data:`Profile` (split, label, semantic type, domains): what
        :func:`misalign.io.summary.summarize` counts, from the columns where the records are not built yet."""
        records = self.records
        return records.tally() if isinstance(records, Records) else Counter(map(profile, records))


def load_dataset(
    source: str | Path,
    *,
    taxonomy: Taxonomy | None = None,
    mapping: Mapping[str, str] | None = None,
    skip_bad: bool = False,
    rejects: str | Path | None = None,
    labels: LabelWords | None = None,
) -> Dataset:
    """Load ``source`` (a file, a hub folder, ``hf://user/name[@revision]``, or ``"bundled"``) into records.

    A folder is read as the hub lays one out (:mod:`misalign.io.hub`): its data files, each file's split from
    its name (``data/test-00000-of-00001.parquet``); ``hf://`` downloads the hub dataset first (``[hub]`` extra).

    ``mapping`` renames columns (our field -> the file's column; a column the file lacks is an error). ``labels``
    maps the label words of single responses (:func:`misalign.io.labels.parse_label_map`; default: only
    ``aligned``/``misaligned``). A malformed row raises :class:`DataError` naming file, line and field; with
    ``skip_bad`` it is written to ``rejects`` (default ``<file>.rejects.jsonl``) and counted instead. A source
    with no rows, or none left after skipping, is an error.
    """
    taxonomy = taxonomy or Taxonomy.default()
    files = _source_files(str(source))
    for p, _ in files:  # every file must exist before any is read
        if not p.exists():
            raise DataError(p, None, None, "file not found")
    digest = hashlib.sha256()
    load = _Load(mapping, skip_bad, _BULK)
    items = _ItemFiles(partial(_source, taxonomy=taxonomy, mapping=mapping, labels=labels), load.ids)
    parts: list[list[Record] | Rows] = []
    with _no_gc(), ThreadPoolExecutor(1) as pool:
        for path, split in files:
            data = path.read_bytes()  # read once: hashed beside the parse (hashlib lets go of the GIL), and parsed
            hashed = pool.submit(digest.update, data)  # from memory by the bulk path
            converter = partial(items.converter, path)
            part = load.planned(path, converter, data, split) if load.bulk else None
            if part is None:
                loaded = load.records(path, converter)
                part = list(_in_split(path, split, loaded) if split else loaded)
            parts.append(part)
            hashed.result()
            del data
    records = Records(parts)
    folder = str(source) != "bundled" and not str(source).startswith("hf://") and Path(source).is_dir()
    rejects_path = load.finish(records, rejects, Path(source) if folder else files[0][0])  # beside a folder
    assert items.shape is not None  # there are records
    return Dataset(records, "bundled" if str(source) == "bundled" else str(source), digest.hexdigest(), items.shape,
                   len(load.bad), rejects_path, records.splits())


def _source_files(source: str) -> list[tuple[Path, str | None]]:
    """The files of a source, each with the split its name gives in a hub folder (else None)."""
    from misalign.io import hub

    if source == "bundled":
        return [(p, None) for p in bundled_files()]
    if hub.parse_hub_url(source):
        return hub.folder_files(hub.download(source))
    path = Path(source)
    return hub.folder_files(path) if path.is_dir() else [(path, None)]


def _in_split(path: Path, split: str, records: Iterable[Record]) -> Iterator[Record]:
    """``records`` of a file named for ``split``: one without a split gets it; one of another split is an error."""
    for rec in records:
        if rec.split is None:
            rec = rec.model_copy(update={"split": split})
        elif rec.split != split:
            raise DataError(path, None, "split", f"record {rec.id!r} is in split {rec.split!r}, but the file name "
                            f"says {split!r}")
        yield rec


@contextmanager
def _no_gc() -> Iterator[None]:
    """Garbage collection paused while a load makes its records: they form no cycles, and with 100k of them alive
    each collection pass only rescans them (a third of a bulk load's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def bundled_files() -> list[Path]:
    """The bundled dataset's files, in a fixed order."""
    return sorted(BUNDLED_DIR.glob("*.jsonl"))


def write_dataset(path: str | Path, records: Iterable[Record], *, columns: Sequence[str] | None = None) -> int:
    """Write records in our schema; the format comes from the extension.

    Parquet holds plain Arrow strings only: text fields as ``string`` columns, and ``domains``, ``provenance``
    and ``meta`` as JSON text (:data:`PARQUET_TYPES`), so every file has one schema that Ray Data and any
    Parquet reader take as it is. ``columns``: write exactly these, in this order, a record's absent ones as
    null (files that must share one schema, such as the splits of a hub folder)."""
    fmt = detect_format(path) if Path(path).suffix else "jsonl"
    flat = fmt in ("csv", "tsv", "parquet")
    rows = (record_to_row(r, flat=flat) for r in records)
    if columns is not None:
        rows = ({c: row.get(c) for c in columns} for row in rows)
    return write_rows(path, rows, PARQUET_TYPES)


PARQUET_TYPES: dict[str, str] = dict.fromkeys(
    ("id", "prompt", "aligned_response", "misaligned_response", "response", "label", "domains", "split",
     "provenance", "meta", "semantic_type"), "string")
"""The Arrow type of each column of our schema in Parquet. ``domains``, ``provenance`` and ``meta`` are JSON
text, not structs: ``provenance`` and ``meta`` are free-form (a struct's fields would differ from file to file and
shard to shard, and could not tell an absent key from a null one), and ``domains`` stays as it was written before,
so that older files and newer ones share a schema; the loader resolves it once per distinct value."""


def record_to_row(record: Record, *, flat: bool = False) -> dict[str, Any]:
    """Our schema as a plain dict; ``flat`` encodes free-form objects as JSON text (CSV, Parquet).

    ``semantic_type`` is written only when set, so records without one keep the bytes they had before it existed.
    """
    row = _drop_unset(record.model_dump(mode="json"))
    if flat:
        for key in ("meta", "provenance", "domains"):
            if key in row:
                row[key] = json.dumps(row[key], ensure_ascii=False, sort_keys=True)
    return row


_OMIT_UNSET = ("semantic_type",)
"""Fields added after files of our schema were already written: left out of a row while unset (None), so a
record without them is written exactly as before (no new null key, column or byte)."""


def _drop_unset(row: dict[str, Any]) -> dict[str, Any]:
    for key in _OMIT_UNSET:
        if row.get(key, "") is None:
            del row[key]
    return row


# -- the row loop both loaders share -------------------------------------------------------------------

@dataclass
class _Ids:
    """Ids loaded so far, each with the file and line it was first loaded from; those of files loaded in bulk
    stay an Arrow column until an id is looked up one at a time."""

    first: dict[str, tuple[Path, int]] = field(default_factory=dict)
    columns: list[tuple[Path, pa.Array, Any]] = field(default_factory=list)
    """(file, ids, their 1-based lines) of bulk-loaded rows not yet in :attr:`first`."""

    def __contains__(self, rec_id: str) -> bool:
        self._settle()
        return rec_id in self.first

    def _settle(self) -> None:
        for path, ids, lines in self.columns:
            self.first.update(zip(ids.to_pylist(), ((path, line) for line in lines.tolist()), strict=True))
        self.columns.clear()

    def add_column(self, path: Path, ids: pa.Array, lines: Any) -> None:
        """Record that ``ids`` (all new) were loaded from ``path`` at ``lines``."""
        self.columns.append((path, ids, lines))

    def known(self) -> pa.Array | None:
        """Every id loaded so far as one Arrow column, or None if there is none."""
        import pyarrow as pa

        chunks = [ids for _, ids, _ in self.columns]
        if self.first:
            chunks.append(pa.array(list(self.first), pa.string()))
        return pa.concat_arrays([c.cast(pa.string()) for c in chunks]) if chunks else None

    def check(self, path: Path, line: int, rec_id: str, column: str, *, say_first: bool = True) -> None:
        """Raise :class:`DataError` on ``column`` if ``rec_id`` was loaded before."""
        self._settle()
        if rec_id in self.first:
            where = self.first[rec_id]
            said = f" (first at {where[0]}:{where[1]})" if say_first else ""
            raise DataError(path, line, column, f"duplicate id {rec_id!r}{said}")

    def add(self, rec_id: str, path: Path, line: int) -> None:
        """Record that ``rec_id`` was loaded from ``path:line``."""
        self.first[rec_id] = (path, line)


@dataclass
class _Load:
    """One load's shared state: the ``--map`` renames, the ids seen, and the rows skipped with ``skip_bad``."""

    mapping: Mapping[str, str] | None
    skip_bad: bool
    bulk: bool = True
    """Read JSONL and Parquet files of our paired schema in bulk (:mod:`misalign.io.bulk`); same records."""
    ids: _Ids = field(default_factory=_Ids)
    bad: list[dict[str, Any]] = field(default_factory=list)

    def records(self, path: Path, converter: Callable[[int, dict[str, Any]], _Convert]) -> Iterator[Any]:
        """Convert ``path``'s rows one by one; ``converter(line, row)`` picks the converter from the first
        readable row.

        A malformed row raises :class:`DataError`, or with ``skip_bad`` is kept for the rejects file; an error
        from ``converter`` (the file's layout is unknown) always raises.
        """
        convert = None
        good = 0
        for line, raw in iter_rows(path):
            if isinstance(raw, DataError):
                self._reject(path, line, raw, raw.raw, good)
                continue
            if convert is None:
                _check_mapping(path, raw, self.mapping)
            row = _rename(raw, self.mapping)
            if convert is None:
                convert = converter(line, row)
            try:
                rec = convert(line, row)
            except DataError as err:
                self._reject(path, line, err, raw, good)
                continue
            self.ids.add(rec.id, path, line)
            good += 1
            yield rec

    def planned(self, path: Path, converter: Callable[[int, dict[str, Any]], _Convert], data: bytes | None,
                split: str | None = None) -> Rows | None:
        """``path``'s records from a bulk plan (:mod:`misalign.io.bulk`), checked now and built on first use; None
        if the file has no plan. ``split``: the split a hub file's name gives (see :func:`_in_split`)."""
        from misalign.io import bulk

        first = bulk.first_row(path)
        if first is None:
            return None
        _check_mapping(path, first, self.mapping)
        convert = converter(1, _rename(first, self.mapping))
        if not isinstance(convert, _ItemConverter) or convert.shape != "misalign":
            return None
        table = bulk.read(path, data, self.mapping)
        checked = None if table is None else bulk.plan_items(table, convert.src, self.mapping)
        if table is None or checked is None:
            return None
        return self._finish_plan(path, convert, table.raw, checked, split)

    def _finish_plan(self, path: Path, convert: _Convert, raw_row: Callable[[int], Any], checked: Any,
                     split: str | None) -> Rows:
        """Rows the columns vouch for are kept as they are; the others (:meth:`bulk.Checked.involved`), in line
        order, go through the per-row converter when flagged or a duplicate, so that their records, errors and
        rejects are the per-row path's."""
        import numpy as np

        from misalign.io import bulk

        keep = np.ones(checked.n, dtype=bool)
        involved = checked.involved(self.ids.known(), split)
        alone = keep.copy()
        alone[involved] = False
        built: dict[int, Any] = {}
        rejected = 0
        for i in involved.tolist():
            line = i + 1
            if checked.flag[i] or checked.id_of(i) in self.ids:
                raw = raw_row(line)
                err = raw if isinstance(raw, DataError) else None
                if err is None:
                    try:
                        rec = convert(line, _rename(raw, self.mapping))
                    except DataError as exc:
                        err = exc
                if err is not None:
                    self._reject(path, line, err, err.raw if raw is err else raw, line - 1 - rejected)
                    keep[i] = False
                    rejected += 1
                    continue
                rec_id, rec_split = rec.id, rec.split
                if split and rec_split is None:
                    rec = rec.model_copy(update={"split": split})
                built[i] = rec
            else:
                rec_id, rec_split = checked.id_of(i), checked.split_of(i)
            if split and rec_split not in (None, split):
                raise DataError(path, None, "split", f"record {rec_id!r} is in split {rec_split!r}, but the file "
                                f"name says {split!r}")
            self.ids.add(rec_id, path, line)
        rows = np.flatnonzero(alone)
        self.ids.add_column(path, checked.ids.take(rows), rows + 1)
        return bulk.Rows(checked, np.flatnonzero(keep), built, split)

    def _reject(self, path: Path, line: int, err: DataError, row: Any, good: int) -> None:
        """Raise ``err`` (saying how many good rows came before it, and how to go on), or with ``skip_bad`` keep
        the row for the rejects file."""
        if not self.skip_bad:
            rows = "1 good row" if good == 1 else f"{good} good rows"
            raise DataError(err.path, err.line, err.field, f"{err.reason}; stopped after {rows} "
                            "(--skip-bad writes bad rows to a rejects file and goes on)") from None
        self.bad.append({"file": str(path), "line": line, "field": err.field, "error": err.reason, "row": row})

    def finish(self, loaded: list[Any], rejects: str | Path | None, first: Path) -> str | None:
        """Write the skipped rows to ``rejects`` (:func:`rejects_file`); the path, or None if none were skipped.

        Nothing ``loaded`` is an error: ``no rows``, or ``no usable rows`` naming the rejects file.
        """
        path = None
        if self.bad:
            path = str(rejects_file(first, rejects))
            write_rows(path, self.bad)
        if not loaded:
            raise DataError(first, None, None, f"no usable rows ({len(self.bad)} rejected, see {path})" if path
                            else "no rows")
        return path


def rejects_file(first: str | Path, rejects: str | Path | None = None) -> Path:
    """Where a load of ``first`` writes skipped rows: ``rejects`` if given, else ``<first>.rejects.jsonl``."""
    return Path(rejects) if rejects else Path(str(first) + ".rejects.jsonl")


# -- shape detection and conversion -------------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _check_mapping(path: Path, row: Mapping[str, Any], mapping: Mapping[str, str] | None) -> None:
    """Every column ``--map`` names must be a column of the file (as its first row shows)."""
    missing = [(ours, theirs) for ours, theirs in (mapping or {}).items() if theirs not in row]
    if missing:
        ours, theirs = missing[0]
        raise DataError(path, None, None, f"--map {ours}={theirs}: the file has no column {theirs!r}; "
                        f"its columns are {sorted(row)}")


def _rename(row: dict[str, Any], mapping: Mapping[str, str] | None) -> dict[str, Any]:
    if not mapping:
        return row
    inverse = {src: ours for ours, src in mapping.items()}
    return {inverse.get(k, k): v for k, v in row.items()}


def _find(row: Mapping[str, Any], field_name: str) -> str | None:
    """The row's column for one of our fields (exact name first, then aliases)."""
    if field_name in row:
        return field_name
    normed = {_norm(k): k for k in row}
    for alias in _ALIASES.get(field_name, ()):
        if alias in normed:
            return normed[alias]
    return None


def _detect_shape(path: Path, line: int, row: dict[str, Any]) -> Shape:
    cols = set(row)
    if {"chosen", "rejected"} <= {_norm(c) for c in cols} and _find(row, "aligned_response") is None:
        return "hh-rlhf"
    if _find(row, "prompt") is None:
        raise DataError(path, line, "prompt", f"no prompt column among {sorted(cols)} (use --map prompt=COLUMN)")
    if _find(row, "aligned_response") and _find(row, "misaligned_response"):
        return "misalign" if {"aligned_response", "misaligned_response"} <= cols else "savacu"
    if _find(row, "response") and _find(row, "label"):
        return "labelled"
    raise DataError(path, line, None, f"cannot tell the layout from columns {sorted(cols)}: expected "
                    "aligned_response + misaligned_response, response + label, or chosen + rejected "
                    "(rename with --map FIELD=COLUMN)")


@dataclass(frozen=True)
class _Source:
    """The file a row comes from and what its values resolve against: the taxonomy (domains), the label words,
    and the declared column types (Parquet), by our field names after ``--map``."""

    path: Path
    taxonomy: Taxonomy
    labels: LabelWords = field(default_factory=lambda: DEFAULT_LABELS)
    types: Mapping[str, str] = field(default_factory=dict)

    def type_of(self, col: str, value: Any) -> str:
        """The name of ``value``'s type: the column's declared type if it has one, else its JSON kind."""
        return self.types.get(col) or _KINDS.get(type(value), type(value).__name__)


_KINDS = {bool: "boolean", int: "integer", float: "number", list: "list", dict: "object"}


def _source(path: Path, *, taxonomy: Taxonomy, mapping: Mapping[str, str] | None = None,
            labels: LabelWords | None = None) -> _Source:
    """The :class:`_Source` of one file of a load."""
    return _Source(path, taxonomy, labels or DEFAULT_LABELS, _rename(column_types(path), mapping))


def _row_id(path: Path, line: int, row: Mapping[str, Any]) -> tuple[str, str | None]:
    """The row's id and its column; a row without one gets ``<file stem>-<line>``."""
    col = _find(row, "id")
    value = str(row[col]).strip() if col else ""
    return value or f"{_stem(path)}-{line}", col


def _common(src: _Source, line: int, row: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """The fields every record has: id, split, domains, and ``meta`` (the given one plus unused columns)."""
    out: dict[str, Any] = {}
    out["id"], id_col = _row_id(src.path, line, row)
    used.add(id_col or "")
    split_col = _find(row, "split")
    if split_col:
        used.add(split_col)
        out["split"] = _split(src.path, line, split_col, row[split_col])
    out["domains"] = _domains(src.path, line, row, src.taxonomy, used)
    meta = _json_obj(src.path, line, "meta", row.get("meta"))
    used.update({"meta", "provenance"})
    meta.update({k: v for k, v in row.items() if k not in used})
    out["meta"] = meta
    return out


def _text(src: _Source, line: int, row: dict[str, Any], name: str, used: set[str], what: str = "text") -> str:
    """The non-empty text of one of our fields (found by name or alias)."""
    col = _find(row, name)
    used.add(col or name)
    return _nonempty(src, line, col or name, row.get(col) if col else None, what)


def _nonempty(src: _Source, line: int, col: str, value: Any, what: str) -> str:
    """``value`` if it is non-empty text; a value of another type is named as such, not as missing."""
    if value is not None and not isinstance(value, str):
        raise DataError(src.path, line, col, f"expected text, got {src.type_of(col, value)}")
    if not value or not value.strip():
        raise DataError(src.path, line, col, f"missing or empty {what}")
    return value


def _paired(src: _Source, line: int, row: dict[str, Any]) -> Record:
    """A row of our schema or the savacu layout: a prompt with aligned and misaligned responses."""
    used: set[str] = set()
    fields = {n: _text(src, line, row, n, used) for n in ("prompt", "aligned_response", "misaligned_response")}
    kind = _semantic_type(src, line, row, used)
    base = _common(src, line, row, used)
    prov = _json_obj(src.path, line, "provenance", row.get("provenance"))
    return _validate(src.path, line, Item, {**base, **fields, "provenance": prov, "semantic_type": kind})


def _labelled(src: _Source, line: int, row: dict[str, Any]) -> Record:
    """A single response with an aligned/misaligned label (other words only as ``src.labels`` maps them)."""
    used: set[str] = set()
    fields = {n: _text(src, line, row, n, used) for n in ("prompt", "response")}
    label_col = _find(row, "label")
    used.add(label_col or "label")
    value = row.get(label_col) if label_col else None
    raw_label = "" if value is None else str(value).strip().casefold()
    if raw_label not in src.labels:
        raise DataError(src.path, line, label_col or "label", unknown_label_message(raw_label))
    base = _common(src, line, row, used)
    return _validate(src.path, line, LabelledResponse, {**base, **fields, "label": src.labels[raw_label]})


def _last_turn(src: _Source, line: int, col: str, value: Any) -> tuple[str, str]:
    """(context, last assistant turn) of one hh-rlhf dialogue column."""
    prompt, response = _split_dialogue(_nonempty(src, line, col, value, "dialogue"))
    if response is None:
        raise DataError(src.path, line, col, "dialogue does not end with an 'Assistant:' turn")
    if not response:
        raise DataError(src.path, line, col, "the last 'Assistant:' turn is empty")
    return prompt, response


def _hh(src: _Source, line: int, row: dict[str, Any]) -> Record:
    """An hh-rlhf preference pair: the chosen dialogue's last turn is aligned, the rejected one's misaligned."""
    cols = {_norm(k): k for k in row}
    prompt, aligned = _last_turn(src, line, cols["chosen"], row.get(cols["chosen"]))
    other_prompt, misaligned = _last_turn(src, line, cols["rejected"], row.get(cols["rejected"]))
    used = {cols["chosen"], cols["rejected"]}
    kind = _semantic_type(src, line, row, used)
    base = _common(src, line, row, used)
    if prompt != other_prompt:
        base["meta"]["rejected_context"] = other_prompt
    return _validate(src.path, line, Item, {**base, "prompt": prompt, "aligned_response": aligned,
                                             "misaligned_response": misaligned, "semantic_type": kind,
                                             "provenance": {"source": "hh-rlhf", "file": src.path.name, "line": line}})


_CONVERTERS: dict[Shape, Callable[[_Source, int, dict[str, Any]], Record]] = {
    "misalign": _paired, "savacu": _paired, "labelled": _labelled, "hh-rlhf": _hh,
}


@dataclass(frozen=True)
class _ItemConverter:
    """Rows of one dataset file as records of ``shape``; each id must be new."""

    src: _Source
    shape: Shape
    ids: _Ids

    def __call__(self, line: int, row: dict[str, Any]) -> Record:
        rec = _CONVERTERS[self.shape](self.src, line, row)
        self.ids.check(self.src.path, line, rec.id, "id")
        return rec



@dataclass
class _ItemFiles:
    """Picks each dataset file's converter from its first row; all files must have the same shape."""

    source: Callable[[Path], _Source]
    ids: _Ids
    shape: Shape | None = None

    def converter(self, path: Path, line: int, row: dict[str, Any]) -> _Convert:
        """The converter for ``path``, from the shape of its first row (``line``)."""
        file_shape = _detect_shape(path, line, row)
        if self.shape not in (None, file_shape):
            raise DataError(path, line, None, f"shape {file_shape} differs from earlier files ({self.shape})")
        self.shape = file_shape
        return _ItemConverter(self.source(path), file_shape, self.ids)


_PROMPT_FIELDS = {"id", "prompt", "domains", "probabilities", "simhash", "duplicate_of", "provenance", "meta",
                  "semantic_type"}


def _prompt(src: _Source, ids: _Ids, line: int, row: dict[str, Any]) -> Prompt:
    """One row of a Stage I prompt pool: a prompt, an id that must be new, domains if given, the rest as meta."""
    used: set[str] = set()
    text = _text(src, line, row, "prompt", used, what="prompt")
    pid, id_col = _row_id(src.path, line, row)
    ids.check(src.path, line, pid, id_col or "id", say_first=False)
    used.add(id_col or "id")
    has_domains = "domains" in row or any(_find(row, d) for d in DIMENSIONS)
    domains = _domains(src.path, line, row, src.taxonomy, used) if has_domains else None
    kind = _semantic_type(src, line, row, used)
    meta = _json_obj(src.path, line, "meta", row.get("meta"))
    meta.update({k: v for k, v in row.items() if k not in used and k not in _PROMPT_FIELDS})
    data = {"id": pid, "prompt": text, "domains": domains, "meta": meta, "semantic_type": kind,
            "provenance": _json_obj(src.path, line, "provenance", row.get("provenance"))}
    for key in ("probabilities", "simhash", "duplicate_of"):
        value = row.get(key)
        if value not in (None, ""):
            data[key] = json.loads(value) if key == "probabilities" and isinstance(value, str) else value
    return _validate(src.path, line, Prompt, data)


def _split_dialogue(text: str) -> tuple[str, str | None]:
    """Split an hh-rlhf dialogue into (context before the last assistant turn, that turn)."""
    parts = _TURN.split("\n\n" + text.lstrip("\n"))
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    if not turns or turns[-1][0] != "Assistant":
        return text.strip(), None
    context = turns[:-1]
    if len(context) == 1:
        return context[0][1], turns[-1][1]
    return "\n\n".join(f"{who}: {said}" for who, said in context), turns[-1][1]


def _domains(path: Path, line: int, row: dict[str, Any], taxonomy: Taxonomy, used: set[str]) -> Domains:
    nested = row.get("domains")
    used.add("domains")
    if isinstance(nested, str) and nested.strip():
        nested = _json_obj(path, line, "domains", nested)
    out: dict[str, list[str]] = {}
    for dim in DIMENSIONS:
        where = f"domains.{dim}"
        if isinstance(nested, dict):
            raw = nested.get(dim)
            extra = set(nested) - set(DIMENSIONS)
            if extra:
                raise DataError(path, line, "domains", f"unknown dimension(s) {sorted(extra)}")
        else:
            col = _find(row, dim)
            raw = row.get(col) if col else None
            if col:
                used.add(col)
                where = col
        out[dim] = _resolve_labels(path, line, where, dim, raw, taxonomy)
    return Domains(**out)


def _resolve_labels(path: Path, line: int, where: str, dim: str, raw: Any, taxonomy: Taxonomy) -> list[str]:
    """Domain labels (list, JSON list text, or ``;``/``|``/``,``-separated text) to display names."""
    if raw is None:
        return []
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, line, where, f"invalid JSON list: {exc.msg}") from exc
        else:
            raw = _split_labels(text, dim, taxonomy)
    if not isinstance(raw, list | tuple):
        raise DataError(path, line, where, f"expected a list of domain names, got {type(raw).__name__}")
    names: list[str] = []
    for label in raw:
        label = str(label).strip()
        if label.casefold() in NO_DOMAIN_LABELS:
            continue
        domain = taxonomy.resolve(dim, label)
        if domain is None:
            raise DataError(path, line, where, f"unknown {dim} domain {label!r}")
        if domain.name not in names:
            names.append(domain.name)
    return names


def _split_labels(text: str, dim: str, taxonomy: Taxonomy) -> list[str]:
    if text.casefold() in NO_DOMAIN_LABELS or taxonomy.resolve(dim, text):
        return [text]
    out: list[str] = []
    for part in re.split(r"[;|\n]", text):
        part = part.strip()
        if not part or taxonomy.resolve(dim, part) or "," not in part:
            out.append(part)
            continue
        # Commas may separate labels or sit inside one ("Misinformation about ethics, law and safety").
        pieces = [p.strip() for p in part.split(",")]
        i = 0
        while i < len(pieces):
            for j in range(len(pieces), i, -1):
                candidate = ", ".join(pieces[i:j])
                if taxonomy.resolve(dim, candidate) or j == i + 1:
                    out.append(candidate)
                    i = j
                    break
    return [p for p in out if p]


def _semantic_type(src: _Source, line: int, row: dict[str, Any], used: set[str]) -> str | None:
    """The row's semantic type (``object``, ``attribute``, ``relation``; any case), or None when it has no
    ``semantic_type`` column or the cell is empty or a no-label word (``None``, ``Unknown``, ...)."""
    col = _find(row, "semantic_type")
    if col is None:
        return None
    used.add(col)
    value = row[col]
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(src.path, line, col, f"expected text, got {src.type_of(col, value)}")
    text = value.strip().casefold()
    if text in NO_DOMAIN_LABELS:
        return None
    if text not in SEMANTIC_TYPES:
        raise DataError(src.path, line, col, f"unknown semantic type {value!r}; expected object, attribute or "
                        "relation (or empty)")
    return text


def _split(path: Path, line: int, col: str, value: Any) -> str | None:
    text = str(value or "").strip().lower()
    if not text:
        return None
    if text not in _SPLITS:
        raise DataError(path, line, col, f"unknown split {value!r}; expected train, validation or test")
    return _SPLITS[text]


def _json_obj(path: Path, line: int, name: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(path, line, name, f"invalid JSON object: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise DataError(path, line, name, f"expected an object, got {type(value).__name__}")
    return dict(value)


def _validate(path: Path, line: int, model: type[_M], data: dict[str, Any]) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DataError(path, line, ".".join(map(str, err["loc"])), err["msg"]) from None


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def load_prompts(source: str | Path, *, taxonomy: Taxonomy | None = None, mapping: Mapping[str, str] | None = None,
                 skip_bad: bool = False, rejects: str | Path | None = None) -> tuple[list[Prompt], int]:
    """Load a prompt pool for Stage I: a prompt column, optional id, domains (kept), the rest as ``meta``.

    Returns the prompts and the number of rows skipped (written to ``rejects``, see :func:`rejects_file`) when
    ``skip_bad`` is set. A file with no rows, or none left after skipping, is an error.
    """
    taxonomy = taxonomy or Taxonomy.default()
    path = Path(source)
    load = _Load(mapping, skip_bad, bulk=False)
    convert = partial(_prompt, _source(path, taxonomy=taxonomy, mapping=mapping), load.ids)
    out = list(load.records(path, lambda line, row: convert))  # one converter for every row
    load.finish(out, rejects, path)
    return out, len(load.bad)


def write_prompts(path: str | Path, prompts: Iterable[Prompt]) -> int:
    """Write prompts; in Parquet the probability vectors become a compact struct of float columns.

    ``semantic_type`` is written only when set (see :func:`record_to_row`)."""
    fmt = detect_format(path) if Path(path).suffix else "jsonl"
    rows = (_drop_unset(p.model_dump(mode="json", exclude_none=False)) for p in prompts)
    if fmt in ("csv", "tsv"):
        rows = ({k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v for k, v in r.items()}
                for r in rows)
    elif fmt == "parquet":
        rows = ({**r, "meta": json.dumps(r["meta"], ensure_ascii=False),
                 "provenance": json.dumps(r["provenance"], ensure_ascii=False)} for r in rows)
    return write_rows(path, rows)
