"""Reading and writing records: JSONL, CSV, Parquet; our schema and the shapes users already have."""

from misalign.io.dataset import (
    BUNDLED_DIR,
    Dataset,
    Records,
    bundled_files,
    load_dataset,
    load_prompts,
    record_to_row,
    rejects_file,
    write_dataset,
    write_prompts,
)
from misalign.io.formats import DataError, detect_format, iter_rows, read_rows, write_rows
from misalign.io.labels import LABELS, describe_labels, parse_label_map

__all__ = [
    "BUNDLED_DIR", "LABELS", "DataError", "Dataset", "Records", "bundled_files", "describe_labels", "detect_format",
    "iter_rows", "load_dataset", "load_prompts", "parse_label_map", "read_rows", "record_to_row", "rejects_file",
    "write_dataset", "write_prompts", "write_rows",
]
