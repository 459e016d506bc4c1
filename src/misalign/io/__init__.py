"""Reading and writing records: JSONL, CSV, Parquet; our schema and the shapes users already have."""

from misalign.io.dataset import (
    BUNDLED_DIR,
    Dataset,
    bundled_files,
    load_dataset,
    record_to_row,
    write_dataset,
)
from misalign.io.formats import DataError, detect_format, read_rows, write_rows

__all__ = [
    "BUNDLED_DIR", "DataError", "Dataset", "bundled_files", "detect_format", "load_dataset", "read_rows",
    "record_to_row", "write_dataset", "write_rows",
]
