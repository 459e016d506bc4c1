"""Bulk loading of our paired schema from JSONL and Parquet, checked column by column on an Arrow table.

The per-row path in :mod:`misalign.io.dataset` converts and validates one dict at a time (pydantic, ~60 µs a
row). Here a whole file is read into an Arrow table (``pyarrow.json`` / ``pyarrow.parquet``), its columns are
checked at once (types, empty text; splits and semantic types per distinct value; domains per distinct
combination), and records are constructed without a second validation. A row the columns cannot vouch for (a
failed check, a JSONL null that may stand for an absent key, a value whose Python form may differ from
``json.loads``'s) is *flagged*: the loader gives it to the per-row path, which returns the record or raises the
error it always did, so records, errors and rejects are the same. A file the table cannot represent line for
line (pyarrow cannot read it, blank lines, a field two columns could fill, per-dimension domain columns, unusual
types) gets no plan, and is read by the per-row path alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from misalign.io import dataset as ds
from misalign.io.formats import DataError, _jsonl_row, _open_binary, detect_format
from misalign.records import Domains, Item
from misalign.taxonomy import DIMENSIONS

_TEXTS = ("prompt", "aligned_response", "misaligned_response")
_SEP_LABEL, _SEP_DIM = "\x1f", "\x1e"


@dataclass
class Table:
    """A file read whole: its rows as an Arrow table, and each row as the per-row reader gives it."""

    table: pa.Table
    raw: Callable[[int], dict[str, Any] | DataError]
    """The row on a 1-based line, exactly as :func:`misalign.io.formats.iter_rows` yields it."""
    exact_nulls: bool
    """True when a null is a null (Parquet); False when it may also be a key the row lacks (JSONL)."""


def read(path: Path, data: bytes | None = None) -> Table | None:
    """``path`` as a :class:`Table`, or None if it is not JSONL/Parquet or Arrow cannot read it line for line.

    ``data``: the file's bytes, if they were read already."""
    try:
        fmt = detect_format(path)
        if fmt == "jsonl":
            return _read_jsonl(path, data)
        if fmt == "parquet":
            return _read_parquet(path)
    except Exception:  # unreadable here: the per-row path reads it and says why
        return None
    return None


def _read_jsonl(path: Path, data: bytes | None) -> Table | None:
    import pyarrow.json as pj

    if data is None or data[:2] == b"\x1f\x8b":
        with _open_binary(path) as fh:
            data = fh.read()
    table = pj.read_json(pa.BufferReader(data))
    table.validate(full=True)  # pyarrow.json lets some bytes that are not UTF-8 through; this catches them
    n, newlines = table.num_rows, data.count(b"\n")
    if not n or not (newlines == n or (newlines == n - 1 and not data.endswith(b"\n"))):
        return None  # blank lines: the table's row numbers are not the file's lines
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None  # a bare CR ends a line for the text reader, not for pyarrow
    lines: list[bytes] = []

    def raw(line: int) -> dict[str, Any] | DataError:
        if not lines:
            lines.extend(data.split(b"\n"))
        text = lines[line - 1].decode("utf-8", "surrogateescape")
        if line == 1:
            text = text.removeprefix("\ufeff")
        return _jsonl_row(path, line, text.rstrip("\r\n"))

    return Table(table, raw, exact_nulls=False)


def _read_parquet(path: Path) -> Table | None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table.validate(full=True)
    if not table.num_rows or len(set(table.column_names)) != table.num_columns:
        return None
    return Table(table, lambda line: table.slice(line - 1, 1).to_pylist()[0], exact_nulls=True)


def plan_items(tbl: Table, src: ds._Source, mapping: Mapping[str, str] | None) -> list[Item | None] | None:
    """The :class:`Item` of every row of a file in our paired schema, None where a row is flagged; None for a
    file this plan does not cover."""
    table = tbl.table
    if mapping:
        inverse = {theirs: ours for ours, theirs in mapping.items()}
        names = [inverse.get(c, c) for c in table.column_names]
        if len(set(names)) != len(names):
            return None
        table = table.rename_columns(names)
    cols = dict.fromkeys(table.column_names)
    for name, aliases in ds._ALIASES.items():  # each row must find the column the per-row path finds
        if sum(c == name or ds._norm(c) in aliases for c in cols) > 1:
            return None
    if any(ds._find(cols, dim) for dim in DIMENSIONS):
        return None
    plan = _Plan(src, table, tbl.exact_nulls)
    try:
        return plan.items()
    except _NoPlan:
        return None


class _NoPlan(Exception):
    """A column this plan does not read exactly: the per-row path reads the file."""


@dataclass
class _Plan:
    src: ds._Source
    table: pa.Table
    exact_nulls: bool

    def __post_init__(self) -> None:
        self.n = self.table.num_rows
        self.cols = dict.fromkeys(self.table.column_names)
        self.flag = np.zeros(self.n, dtype=bool)
        self.used: set[str] = {"domains", "meta", "provenance"}

    def items(self) -> list[Item | None]:
        texts = {name: self._text(name) for name in _TEXTS}
        ids = self._ids()
        split_col = ds._find(self.cols, "split")
        splits = self._per_value(split_col, lambda v: ds._split(self.src.path, 0, split_col, v))
        kind_col = ds._find(self.cols, "semantic_type")
        kinds = self._per_value(kind_col, lambda v: ds._semantic_type(self.src, 0, {kind_col: v}, set()))
        self.used.update(c for c in (split_col, kind_col) if c)
        domains = self._domains()
        prov, meta = self._object("provenance"), self._object("meta")
        extra = [(c, self._free(self.table.column(c))) for c in self.cols if c not in self.used]
        item_set = {"id", "domains", "meta", *_TEXTS, "provenance", "semantic_type", *(["split"] if split_col else [])}
        dims = set(DIMENSIONS)
        out: list[Item | None] = []
        rows = zip(self.flag.tolist(), ids, texts["prompt"], meta, texts["aligned_response"],
                   texts["misaligned_response"], domains, splits, prov, kinds, strict=True)
        for i, (flagged, rid, prompt, row_meta, aligned, misaligned, dom, split, row_prov, kind) in enumerate(rows):
            if flagged:
                out.append(None)
                continue
            for c, values in extra:
                row_meta[c] = values[i]
            out.append(_construct(Item, item_set, {
                "id": rid, "prompt": prompt, "meta": row_meta, "aligned_response": aligned,
                "misaligned_response": misaligned,
                "domains": _construct(Domains, dims, {"safety": list(dom[0]), "value": list(dom[1]),
                                                      "cultural": list(dom[2])}),
                "split": split, "provenance": row_prov, "semantic_type": kind}))
        return out

    # -- columns ---------------------------------------------------------------------------------------

    def _mark(self, rows: Any) -> None:
        self.flag[np.asarray(rows, dtype=np.int64)] = True

    def _nulls(self, arr: pa.ChunkedArray) -> None:
        if arr.null_count:
            self._mark(pc.indices_nonzero(arr.is_null()).to_numpy())

    def _text(self, name: str) -> list[Any]:
        col = ds._find(self.cols, name) or name
        self.used.add(col)
        if col not in self.cols:
            raise _NoPlan  # cannot happen for our schema's shape; the per-row path says what is missing
        arr = self.table.column(col)
        if not _is_text(arr.type):
            self.flag[:] = True  # "expected text, got ...", from the per-row path
            return [None] * self.n
        values = arr.to_pylist()
        starts = pc.fill_null(pc.match_substring_regex(arr, "^[!-~]"), False)  # text that begins with a visible
        if not pc.all(starts).as_py():  # ASCII character is not blank; the rest is checked as the per-row path does
            maybe = pc.indices_nonzero(pc.invert(starts)).to_pylist()
            self._mark([i for i in maybe if not values[i] or values[i].isspace()])
        return values

    def _ids(self) -> list[str]:
        col = ds._find(self.cols, "id")
        stem = ds._stem(self.src.path)
        if col is None:
            return [f"{stem}-{i}" for i in range(1, self.n + 1)]
        self.used.add(col)
        arr = self.table.column(col)
        self._nulls(arr)  # a null id is the text "None" to the per-row path
        if pa.types.is_integer(arr.type):  # as str() writes an integer that json.loads or Parquet gave
            return [str(v) for v in arr.to_pylist()]
        if not _is_text(arr.type):
            self.flag[:] = True
            return [""] * self.n
        return [(v.strip() if v else "") or f"{stem}-{i}" for i, v in enumerate(arr.to_pylist(), 1)]

    def _per_value(self, col: str | None, convert: Callable[[Any], Any]) -> list[Any]:
        """``convert`` of each distinct value of a text column; rows whose value it rejects are flagged."""
        if col is None:
            return [None] * self.n
        arr = self.table.column(col)
        if pa.types.is_null(arr.type):
            return [None] * self.n
        if not _is_text(arr.type):
            self.flag[:] = True
            return [None] * self.n
        values = arr.to_pylist()
        seen: dict[Any, Any] = {}
        bad: set[Any] = set()
        for v in dict.fromkeys(values):
            try:
                seen[v] = convert(v)
            except DataError:
                bad.add(v)
        if bad:
            self._mark([i for i, v in enumerate(values) if v in bad])
        return [seen.get(v) for v in values]

    def _domains(self) -> list[tuple[list[str], ...]]:
        """Each row's domains, resolved once per distinct combination."""
        empty = ([], [], [])
        if "domains" not in self.cols:
            return [empty] * self.n
        arr = self.table.column("domains").combine_chunks()
        kind = arr.type
        if pa.types.is_null(kind):
            return [empty] * self.n
        if _is_text(kind):
            keys = arr
            resolve: Callable[[Any], Any] = self._domains_of_text
        elif pa.types.is_struct(kind):
            keys = self._domain_keys(arr)
            resolve = self._domains_of_key
        else:
            raise _NoPlan
        encoded = keys.dictionary_encode(null_encoding="encode")
        resolved: list[Any] = []
        for key in encoded.dictionary.to_pylist():
            try:
                resolved.append(resolve(key))
            except DataError:
                resolved.append(None)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        null_at = [i for i, r in enumerate(resolved) if r is None]
        if null_at:
            self._mark(np.flatnonzero(np.isin(indices, null_at)))
        return [resolved[j] or empty for j in indices.tolist()]

    def _domains_of_text(self, text: str | None) -> tuple[list[str], ...]:
        found = ds._domains(self.src.path, 0, {"domains": text}, self.src.taxonomy, set())
        return tuple(found.get(dim) for dim in DIMENSIONS)

    def _domain_keys(self, arr: pa.StructArray) -> pa.Array:
        """One text per row naming its labels per dimension; rows that are null have no labels."""
        names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
        if names - set(DIMENSIONS):
            raise _NoPlan  # "unknown dimension(s)" applies to rows that hold the key, even as null
        parts = []
        for dim in DIMENSIONS:
            if dim not in names:
                parts.append(pa.nulls(len(arr), pa.string()))
                continue
            child = pc.struct_field(arr, dim)
            if pa.types.is_null(child.type):
                parts.append(pa.nulls(len(arr), pa.string()))
                continue
            if not pa.types.is_list(child.type) or not (_is_text(child.type.value_type)
                                                         or pa.types.is_null(child.type.value_type)):
                raise _NoPlan
            child = child.cast(pa.list_(pa.string()))
            flat = child.flatten()
            if flat.null_count or pc.any(pc.match_substring_regex(flat, f"[{_SEP_LABEL}{_SEP_DIM}]")).as_py():
                raise _NoPlan
            parts.append(pc.binary_join(child, _SEP_LABEL))
        keys = pc.binary_join_element_wise(*parts, _SEP_DIM, null_handling="replace", null_replacement="")
        return pc.if_else(arr.is_null(), _SEP_DIM * 2, keys) if arr.null_count else keys

    def _domains_of_key(self, key: str) -> tuple[list[str], ...]:
        return tuple(ds._resolve_labels(self.src.path, 0, f"domains.{dim}", dim,
                                        part.split(_SEP_LABEL) if part else [], self.src.taxonomy)
                     for dim, part in zip(DIMENSIONS, key.split(_SEP_DIM), strict=True))

    def _object(self, name: str) -> list[dict[str, Any]]:
        """A free-form object column (``meta``, ``provenance``): each row's own dict."""
        if name not in self.cols:
            return [{} for _ in range(self.n)]
        arr = self.table.column(name)
        if _is_text(arr.type):
            values = arr.to_pylist()
        elif pa.types.is_struct(arr.type) or pa.types.is_null(arr.type):
            values = self._free(arr, nulls_ok=True)
        else:
            self.flag[:] = True
            return [{} for _ in range(self.n)]
        out: list[dict[str, Any]] = []
        for i, value in enumerate(values):
            if not value or value == "{}":  # what our writer puts in Parquet for an empty object
                out.append({})
                continue
            try:
                out.append(ds._json_obj(self.src.path, 0, name, value))
            except DataError:
                self.flag[i] = True
                out.append({})
        return out

    def _free(self, arr: pa.ChunkedArray, nulls_ok: bool = False) -> list[Any]:
        """A column's Python values, flagging JSONL rows where they may differ from ``json.loads``'s (a null that
        may be an absent key, a float that may have been an integer, a type JSON does not have)."""
        if not self.exact_nulls:
            if not nulls_ok:
                self._nulls(arr)
            arr = arr.combine_chunks()
            self._mark(np.flatnonzero(_unsure(arr)))
        return arr.to_pylist()


def _unsure(arr: pa.Array) -> np.ndarray:
    """Per row: True where the value read by pyarrow from JSON may not be what ``json.loads`` gives."""
    kind, n = arr.type, len(arr)
    if pa.types.is_null(kind) or _is_text(kind) or pa.types.is_boolean(kind) or kind == pa.int64():
        return np.zeros(n, dtype=bool)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind):  # 1 and 1.0 both read as 1.0
        return valid & pc.fill_null(pc.equal(pc.floor(arr), arr), False).to_numpy(zero_copy_only=False)
    if pa.types.is_struct(kind):
        out = np.zeros(n, dtype=bool)
        for i in range(kind.num_fields):
            child = arr.field(i)  # a key missing from the row reads as null, like a null it holds
            out |= child.is_null().to_numpy(zero_copy_only=False) | _unsure(child)
        return out & valid
    if pa.types.is_list(kind):
        inner = _unsure(arr.flatten())
        out = np.zeros(n, dtype=bool)
        if inner.any():
            out[pc.list_parent_indices(arr).to_numpy()[inner]] = True
        return out
    return valid  # timestamps (pyarrow reads ISO dates as them) and the like


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _construct(cls: type[Any], fields_set: set[str], values: dict[str, Any]) -> Any:
    """A model from values already checked (as :meth:`pydantic.BaseModel.model_construct` does, without its
    per-field defaults pass): ``values`` must hold every field, in declaration order."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    _SET_FIELDS(obj, set(fields_set))
    _SET_EXTRA(obj, None)
    _SET_PRIVATE(obj, None)
    return obj


_SET_FIELDS = BaseModel.__pydantic_fields_set__.__set__  # type: ignore[attr-defined]
_SET_EXTRA = BaseModel.__pydantic_extra__.__set__  # type: ignore[attr-defined]
_SET_PRIVATE = BaseModel.__pydantic_private__.__set__  # type: ignore[attr-defined]



def first_row(path: Path) -> dict[str, Any] | None:
    """The first row of a JSONL or Parquet file as the per-row reader gives it (without reading the rest), or
    None if the file is another format or its first line is not a row."""
    try:
        fmt = detect_format(path)
        if fmt == "jsonl":
            with _open_binary(path) as fh:
                line = fh.readline()
            if line.count(b"\r") != line.count(b"\r\n"):
                return None  # a bare CR ends a line for the text reader
            text = line.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
            row = _jsonl_row(path, 1, text.rstrip("\r\n")) if text.strip() else None
            return row if isinstance(row, dict) else None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
                return batch.to_pylist()[0] if batch.num_rows else None
    except Exception:  # the per-row path reads it and says why
        return None
    return None
