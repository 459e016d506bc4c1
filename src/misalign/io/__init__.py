"""Reading and writing records: JSONL, CSV, Parquet; our schema and the shapes users already have."""

from misalign.io.dataset import (
    BUNDLED_DIR,
    Dataset,
    bundled_files,
    load_dataset,
    load_prompts,
    record_to_row,
    write_dataset,
    write_prompts,
)
from misalign.io.formats import DataError, detect_format, iter_rows, read_rows, write_rows

__all__ = [
    "BUNDLED_DIR", "DataError", "Dataset", "bundled_files", "detect_format", "iter_rows", "load_dataset",
    "load_prompts", "read_rows", "record_to_row", "write_dataset", "write_prompts", "write_rows",
]
