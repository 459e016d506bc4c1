"""Hugging Face hub folders: write one (Parquet per split and a dataset card), read one, fetch one by ``hf://`` id.

The layout is the hub's own: ``data/<split>-00000-of-00001.parquet`` and a ``README.md`` whose YAML front matter
lists the files per split (``configs``) and the features and split sizes (``dataset_info``), so
``datasets.load_dataset(DIR)`` and ``misalign eval --dataset DIR`` read the same records. ``huggingface_hub`` is
imported only when an ``hf://`` source is loaded (the ``[hub]`` extra)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from misalign.errors import ConfigError
from misalign.io.dataset import _SPLITS, BUNDLED_DIR, Dataset, Record, record_to_row, write_dataset
from misalign.io.formats import _EXT, DataError

HUB_PREFIX = "hf://"
SPLIT_ORDER = ("train", "validation", "test")
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z]+)(?:-\d{5}-of-\d{5})?$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_hub_url(source: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of ``hf://user/name[@revision]`` (also ``hf://datasets/user/name``, the
    ``HfFileSystem`` spelling), None for any other source; a malformed id is a :class:`ConfigError`."""
    if not source.startswith(HUB_PREFIX):
        return None
    rest = source.removeprefix(HUB_PREFIX).removeprefix("datasets/").strip("/")
    repo, at, revision = rest.partition("@")
    if not _REPO.match(repo) or (at and not revision):
        raise ConfigError(f"{source}: expected hf://USER/NAME or hf://USER/NAME@REVISION")
    return repo, revision or None


def download(source: str) -> Path:
    """The local folder of the hub dataset ``hf://user/name[@revision]`` (``snapshot_download``, which keeps it
    in the Hugging Face cache); needs the ``[hub]`` extra and network, or the cache with ``HF_HUB_OFFLINE=1``."""
    parsed = parse_hub_url(source)
    if parsed is None:
        raise ConfigError(f"{source}: not an hf:// dataset id")
    repo, revision = parsed
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"{source}: hf:// datasets need huggingface_hub: pip install "
                          "'misalign-bench[hub]'") from None
    patterns = ["README.md", *(f"*{ext}" for ext in _EXT), *(f"*{ext}.gz" for ext in _EXT)]
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, not found, no access, bad revision: huggingface_hub raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{source}: cannot download ({type(exc).__name__}{': ' + first if first else ''})"
                          ) from None


def folder_files(folder: Path) -> list[tuple[Path, str | None]]:
    """The data files of a hub folder (``folder/data/`` if it has one, else ``folder``), each with the split its
    name gives (``train-00000-of-00001.parquet``, ``test.jsonl``; None for another name), splits in
    train/validation/test order."""
    where = folder / "data" if (folder / "data").is_dir() else folder
    files = [p for p in where.iterdir() if p.is_file() and not p.name.startswith(".") and _is_data(p)
             and not p.name.endswith(".rejects.jsonl")]  # a load's skipped rows are not data
    if not files:
        raise DataError(folder, None, None, "no data files in the folder (a hub folder has "
                        "data/<split>-00000-of-00001.parquet)")
    out = [(p, split_of(p)) for p in files]
    return sorted(out, key=lambda f: (SPLIT_ORDER.index(f[1]) if f[1] else len(SPLIT_ORDER), f[0].name))


def _is_data(p: Path) -> bool:
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return bool(suffixes) and suffixes[-1] in _EXT


def split_of(path: Path) -> str | None:
    """The split a data file's name gives: ``train``, ``validation`` or ``test`` (``dev``, ``val`` ... too)."""
    m = _SPLIT_FILE.match(path.name.split(".", 1)[0])
    return _SPLITS.get(m.group("split").lower()) if m else None


def write_hub_folder(out: Path, ds: Dataset, *, license: str | None = None, pretty_name: str | None = None,
                     card_body: str | None = None) -> dict[str, int]:
    """Write ``ds`` as a hub folder in ``out``: ``data/<split>-00000-of-00001.parquet`` per split present (all
    with one schema) and ``README.md``; return the records per split. Records without a split go to ``test``
    (an evaluation set). Split files of ours left from an earlier export are removed."""
    by_split: dict[str, list[Record]] = {}
    for r in ds.records:
        split = r.split or "test"
        by_split.setdefault(split, []).append(r if r.split else r.model_copy(update={"split": split}))
    columns = _columns(ds.records)
    data = out / "data"
    counts: dict[str, int] = {}
    for split in SPLIT_ORDER:
        path = data / f"{split}-00000-of-00001.parquet"
        if split in by_split:
            counts[split] = write_dataset(path, by_split[split], columns=columns)
        else:
            path.unlink(missing_ok=True)
    files = {s: data / f"{s}-00000-of-00001.parquet" for s in counts}
    card = dataset_card(ds, counts, _features(next(iter(files.values()))), {s: _num_bytes(p) for s, p in files.items()},
                        license=license, pretty_name=pretty_name, body=card_body)
    (out / "README.md").write_text(card, encoding="utf-8")
    return counts


def _columns(records: Sequence[Record]) -> list[str]:
    """Every column any record writes, in first-seen order."""
    return list(dict.fromkeys(k for r in records for k in record_to_row(r)))


def _features(path: Path) -> list[dict[str, str]]:
    """``dataset_info.features`` of a Parquet file: each column with its Arrow type (``string``)."""
    import pyarrow.parquet as pq

    return [{"name": f.name, "dtype": str(f.type)} for f in pq.read_schema(path)]


def _num_bytes(path: Path) -> int:
    """A split's size in memory (Arrow), as ``dataset_info.splits`` gives it."""
    import pyarrow.parquet as pq

    return pq.read_table(path).nbytes


def dataset_card(ds: Dataset, counts: dict[str, int], features: list[dict[str, str]], num_bytes: dict[str, int], *,
                 license: str | None = None, pretty_name: str | None = None, body: str | None = None) -> str:
    """The dataset card: YAML front matter (``configs``, ``dataset_info``, ``license``, ``task_categories``,
    ``pretty_name``) and ``body`` (default: a short generic card)."""
    import yaml

    bundled = ds.source == "bundled"
    name = pretty_name or ("Mis-Align Bench" if bundled else Path(ds.source.rstrip("/")).name.split(".")[0])
    meta = {
        "pretty_name": name,
        "license": license or ("apache-2.0" if bundled else "unknown"),
        "task_categories": ["text-classification"],
        "tags": ["misalign-bench", "alignment", "safety"],
        "size_categories": [_size_category(sum(counts.values()))],
        "configs": [{"config_name": "default", "data_files": [
            {"split": s, "path": f"data/{s}-00000-of-00001.parquet"} for s in counts]}],
        "dataset_info": {"features": features, "splits": [
            {"name": s, "num_bytes": num_bytes[s], "num_examples": n} for s, n in counts.items()]},
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{body or _generic_body(name, ds, counts, license)}"


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def _generic_body(name: str, ds: Dataset, counts: dict[str, int], license: str | None) -> str:
    splits = ", ".join(f"{s} {n}" for s, n in counts.items())
    kind = ("single responses with a gold label (`prompt`, `response`, `label`)" if ds.kind == "labelled" else
            "paired items (`prompt`, `aligned_response`, `misaligned_response`)")
    return (f"# {name}\n\n{sum(counts.values())} {kind}, with their taxonomy `domains` (JSON text: safety, value "
            f"and cultural domain names) and `split`, in the misalign-bench schema. Splits: {splits}.\n\n"
            "Load it with `datasets.load_dataset(\"USER/NAME\")`, or evaluate a model on it with "
            "`misalign eval --dataset hf://USER/NAME` (misalign-bench).\n\n"
            f"Licence: {license or 'not stated by the exporter'}.\n")


def bundled_card_body() -> str:
    """The bundled dataset's card text: how to load it, then its DATASHEET."""
    sheet = (BUNDLED_DIR / "DATASHEET.md").read_text(encoding="utf-8")
    return ("# Mis-Align Bench\n\nLoad with `datasets.load_dataset(\"USER/NAME\")`, or run the benchmark on it with "
            "`misalign eval --dataset hf://USER/NAME` (misalign-bench). The `domains`, `provenance` and `meta` "
            "columns are JSON text.\n\n" + sheet)
