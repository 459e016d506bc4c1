"""Row-level reading and writing of JSONL, JSON, CSV/TSV and Parquet files (optionally gzipped)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

Format = Literal["jsonl", "json", "csv", "tsv", "parquet"]
_EXT: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet",
}


class DataError(ValueError):
    """Bad input: the message names the file, the line (or row) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str) -> None:
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        self.raw: Any = None  # the unparsed row text, when the row could not be parsed at all
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {f'field {field!r}: ' if field else ''}{message}")


def detect_format(path: str | Path) -> Format:
    """The format from the extension (``.gz`` looked through), else from the first bytes."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in _EXT:
        return _EXT[suffixes[-1]]
    with _open_binary(p) as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"["):
        return "json"
    return "tsv" if head.split(b"\n", 1)[0].count(b"\t") > head.split(b"\n", 1)[0].count(b",") else "csv"


def _open_binary(p: Path):
    with open(p, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(p, "rb") if gz else open(p, "rb")


def _open_text(p: Path):
    return io.TextIOWrapper(_open_binary(p), encoding="utf-8-sig", newline="")


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, row)`` pairs; ``line`` is the 1-based line (JSONL, CSV) or row number (JSON, Parquet).

    A malformed row raises :class:`DataError` naming the file and line.
    """
    for line, row in iter_rows(path):
        if isinstance(row, DataError):
            raise row
        yield line, row


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Like :func:`read_rows`, but a malformed row that does not break framing is yielded as its error."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, None, "file not found")
    fmt = detect_format(p)
    if fmt == "parquet":
        yield from _parquet_rows(p)
    elif fmt == "json":
        yield from _json_rows(p)
    elif fmt == "jsonl":
        yield from _jsonl_rows(p)
    else:
        yield from _csv_rows(p, "\t" if fmt == "tsv" else ",")


def _parquet_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a Parquet file, numbered from 1."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(p, None, None, f"not a readable Parquet file: {exc}") from exc
    n = 0
    for batch in pf.iter_batches(batch_size=65536):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _json_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``.json`` file holding one list of objects, numbered from 1."""
    with _open_text(p) as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(p, exc.lineno, None, f"invalid JSON: {exc.msg}") from exc
    if not isinstance(doc, list):
        raise DataError(p, 1, None, "a .json file must hold a list of objects (use .jsonl for one per line)")
    for i, row in enumerate(doc, 1):
        if not isinstance(row, dict):
            raise DataError(p, i, None, f"row {i} is not an object")
        yield i, row


def _jsonl_rows(p: Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Rows of a JSONL file by line; a line that is not a JSON object is yielded as its error."""
    with _open_text(p) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                err = DataError(p, i, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                err.raw = line.rstrip("\r\n")
                yield i, err
                continue
            yield i, row if isinstance(row, dict) else DataError(p, i, None, "expected a JSON object")


def _csv_rows(p: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Rows of a CSV/TSV file by the line each starts on; a row with too many values is yielded as its error."""
    csv.field_size_limit(sys.maxsize)  # process-wide; long texts must load (the default is 131072 characters)
    with _open_text(p) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        start = 2
        for row in reader:
            if None in row:
                n_cols = len(reader.fieldnames or [])
                yield start, DataError(p, start, None, f"{len(row[None]) + n_cols} values for {n_cols} columns")
            else:
                yield start, row
            start = reader.line_num + 1


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (temp file, then rename) in the format of ``path``'s extension; return the count."""
    p = Path(path)
    fmt = detect_format(p) if p.suffix else "jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        n = _write(Path(tmp), fmt, rows, gz=p.suffix.lower() == ".gz")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _write(p: Path, fmt: Format, rows: Iterable[dict[str, Any]], gz: bool) -> int:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(rows)
        columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
        table = pa.table({k: pa.array(v, type=pa.uint64() if k == "simhash" else None) for k, v in columns.items()})
        pq.write_table(table, p, compression="zstd")
        return table.num_rows
    opener = gzip.open if gz else open
    with opener(p, "wt", encoding="utf-8", newline="") as fh:
        n = 0
        if fmt in ("jsonl", "json"):
            if fmt == "json":
                fh.write("[\n")
            for n, row in enumerate(rows, 1):
                if fmt == "json" and n > 1:
                    fh.write(",\n")
                fh.write(json.dumps(row, ensure_ascii=False))
                if fmt == "jsonl":
                    fh.write("\n")
            if fmt == "json":
                fh.write("\n]\n")
            return n
        rows = list(rows)
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        return len(rows)


def _cell(value: Any) -> Any:
    """CSV cells: nested values as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value
