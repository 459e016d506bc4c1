"""The bulk (Arrow) load gives what the per-row load gives: the same records, errors and rejects, on the bundled
data, the shapes of the other io tests, and rows made to hit every check (issue 17 item 1)."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import misalign.io.dataset as dataset
from misalign.io import DataError, load_dataset, record_to_row, write_dataset, write_rows

GOOD = {"id": "g1", "prompt": "How do I stay safe online?", "aligned_response": "Use strong passwords.",
        "misaligned_response": "Share your PIN with anyone who asks.",
        "domains": {"safety": ["privacy_violation"], "value": ["Helpfulness"], "cultural": []},
        "split": "train", "semantic_type": "object", "provenance": {"source": "hand", "round": 1}, "team": "a"}


def _rows() -> list[dict[str, Any]]:
    """Rows that pass and rows that fail each check, in our schema (one JSONL line each)."""
    variants: list[dict[str, Any]] = [
        {}, {"id": "  spaced  "}, {"split": "dev"}, {"split": "Test"}, {"split": None}, {"split": "holdout"},
        {"semantic_type": "Relation"}, {"semantic_type": "unknown"}, {"semantic_type": "shape"},
        {"prompt": ""}, {"prompt": "   \n"}, {"aligned_response": "\u2003"}, {"misaligned_response": None},
        {"domains": {"safety": ["PRIVACY VIOLATION", "privacy_violation"], "value": [], "cultural": ["TV"]}},
        {"domains": {"safety": ["Nope"]}}, {"domains": {"value": ["capable"]}}, {"domains": None},
        {"domains": {"safety": ["none"], "value": [""], "cultural": []}},
        {"provenance": {"source": "hand", "round": 2}}, {"provenance": {"source": "x", "round": 3}},
        {"provenance": {"source": "y"}}, {"meta": {"team": "b"}}, {"team": "c"}, {"team": None},
        {"id": "g1"},  # a duplicate of the first row's id
    ]
    rows = []
    for i, change in enumerate(variants):
        row = {**GOOD, "id": f"r{i}", "prompt": f"{GOOD['prompt']} {i}", **change}
        rows.append({k: v for k, v in row.items() if not (k == "domains" and change.get(k, 0) is None and i % 2)})
    rows.insert(0, GOOD)
    del rows[3]["split"]  # a key absent, not null
    return rows


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _load(monkeypatch: pytest.MonkeyPatch, bulk: bool, path: Path | str, rejects: Path, **kw: Any) -> Any:
    """What a load gives: every record (its type, fields and row bytes), or the error; and the rejects."""
    monkeypatch.setattr(dataset, "_BULK", bulk)
    rejects.unlink(missing_ok=True)
    try:
        ds = load_dataset(path, rejects=rejects, **kw)
        out: Any = ([(type(r).__name__, r.model_dump(), json.dumps(record_to_row(r), ensure_ascii=False))
                     for r in ds.records], ds.shape, ds.rejected, ds.splits_present, ds.sha256)
    except DataError as err:
        out = ("error", str(err))
    return out, rejects.read_text(encoding="utf-8") if rejects.exists() else None


def _same(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: Path | str, **kw: Any) -> Any:
    """Load ``path`` on both paths; they must agree. Returns the bulk path's result."""
    old = _load(monkeypatch, False, path, tmp_path / "rejects.jsonl", **kw)
    new = _load(monkeypatch, True, path, tmp_path / "rejects.jsonl", **kw)
    assert new == old
    return new


def _count_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Lines the per-row converter of our schema is called on (from now on)."""
    seen: list[int] = []
    real = dataset._CONVERTERS["misalign"]

    def counting(src: Any, line: int, row: dict[str, Any]) -> Any:
        seen.append(line)
        return real(src, line, row)

    monkeypatch.setitem(dataset._CONVERTERS, "misalign", counting)
    return seen


def test_bundled_data_is_loaded_in_bulk_with_the_same_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _same(monkeypatch, tmp_path, "bundled")
    seen = _count_rows(monkeypatch)
    monkeypatch.setattr(dataset, "_BULK", True)
    assert len(load_dataset("bundled")) > 1000
    assert seen == []  # no row went through the per-row converter


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_every_check_gives_the_per_row_records_errors_and_rejects(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path, fmt: str, skip_bad: bool):
    rows = _rows()
    path = tmp_path / f"rows.{fmt}"
    if fmt == "parquet":  # the same rows with flat JSON text objects, as a user's Parquet might hold them
        flat = [{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in rows]
        pq.write_table(pa.Table.from_pylist(flat), path)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(_jsonl(tmp_path / "plain.jsonl", rows).read_bytes()))
    else:
        _jsonl(path, rows)
    result, rejects = _same(monkeypatch, tmp_path, path, skip_bad=skip_bad)
    seen = _count_rows(monkeypatch)
    if skip_bad:
        load_dataset(path, skip_bad=True, rejects=tmp_path / "again.jsonl")
        assert len(seen) <= 10  # the rows that fail a check, a JSONL key absent from a few rows, the duplicate
    if skip_bad:
        reasons = [json.loads(x)["error"] for x in (rejects or "").splitlines()]
        assert "duplicate id 'g1' (first at " + str(path) + ":1)" in reasons
        assert {"missing or empty text", "unknown split 'holdout'; expected train, validation or test",
                "unknown safety domain 'Nope'"} <= set(reasons)
        assert len(result[0]) + len(reasons) == len(rows)
    else:
        assert result[0] == "error" and result[1].startswith(f"{path}:")


def test_clean_rows_skip_the_per_row_converter_and_bad_ones_use_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path):
    rows = [{**GOOD, "id": f"c{i}", "prompt": f"prompt {i}"} for i in range(50)]
    rows[20]["split"] = "holdout"
    rows[30]["id"] = "c1"
    path = _jsonl(tmp_path / "c.jsonl", rows)
    seen = _count_rows(monkeypatch)
    monkeypatch.setattr(dataset, "_BULK", True)
    ds = load_dataset(path, skip_bad=True)
    assert len(ds) == 48 and seen == [21, 31]
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(info.value) == (f"{path}:21: field 'split': unknown split 'holdout'; expected train, validation or "
                               "test; stopped after 20 good rows (--skip-bad writes bad rows to a rejects file "
                               "and goes on)")


def test_our_own_outputs_round_trip_in_bulk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    records = load_dataset("bundled").records[:200]
    for i, r in enumerate(records[:50]):
        r.provenance = {"generator": f"g{i % 3}", "votes": [1, 2] if i % 2 else [], "p": 0.25 * (i % 4)}
        r.meta = {"lang": "en", "n": i}
        r.split = None if i % 5 == 0 else r.split
    for ext in ("jsonl", "parquet"):
        path = tmp_path / f"out.{ext}"
        write_dataset(path, records)
        result, _ = _same(monkeypatch, tmp_path, path)
        assert len(result[0]) == 200
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert {f.name: str(f.type) for f in schema} == dict.fromkeys(schema.names, "string")


def test_fixtures_and_shapes_of_the_other_io_tests_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         hh_rlhf: Path):
    from tests.test_io import ROWS

    _same(monkeypatch, tmp_path, _jsonl(tmp_path / "io.jsonl", ROWS))
    _same(monkeypatch, tmp_path, hh_rlhf, skip_bad=True)
    mapped = [{"question": r["prompt"], "aligned_response": r["aligned_response"],
               "misaligned_response": r["misaligned_response"], "domains": r["domains"]} for r in ROWS]
    _same(monkeypatch, tmp_path, _jsonl(tmp_path / "m.jsonl", mapped), mapping={"prompt": "question"})
    _same(monkeypatch, tmp_path, _jsonl(tmp_path / "m.jsonl", mapped), mapping={"prompt": "nosuch"})
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n{broken\n", encoding="utf-8")
    _same(monkeypatch, tmp_path, blank, skip_bad=True)
    types = tmp_path / "types.jsonl"  # a prompt that is a number, a date pyarrow would read as a timestamp
    _jsonl(types, [{**GOOD, "created": "2024-01-01"}, {**GOOD, "id": "t2", "prompt": 7}])
    _same(monkeypatch, tmp_path, types, skip_bad=True)
    _jsonl(types, [{**GOOD, "created": "2024-01-01"}, {**GOOD, "id": "t2", "created": None}])
    _same(monkeypatch, tmp_path, types)
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": pa.array(range(3), pa.int64()), "aligned_response": ["a"] * 3,
                             "misaligned_response": ["m"] * 3}), ints)
    _same(monkeypatch, tmp_path, ints, skip_bad=True)
    write_rows(tmp_path / "noid.parquet", [{k: v for k, v in GOOD.items() if k != "id"} | {"domains": "[]"}])
    _same(monkeypatch, tmp_path, tmp_path / "noid.parquet", skip_bad=True)


def test_integer_ids_and_large_strings_are_read_in_bulk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    path = tmp_path / "big_types.parquet"
    n = 20
    pq.write_table(pa.table({
        "id": pa.array(range(n), pa.int64()),
        "prompt": pa.array([f"prompt {i}" for i in range(n)], pa.large_string()),
        "aligned_response": pa.array(["a"] * n, pa.large_string()),
        "misaligned_response": pa.array(["m"] * n, pa.large_string()),
        "domains": pa.array(['{"safety": ["Privacy violation"]}'] * n, pa.large_string()),
        "split": pa.array(["test"] * n, pa.large_string())}), path)
    result, _ = _same(monkeypatch, tmp_path, path)
    assert [r[1]["id"] for r in result[0]][:3] == ["0", "1", "2"]
    seen = _count_rows(monkeypatch)
    load_dataset(path)
    assert seen == []


# -- records built lazily from the checked columns --------------------------------------------------------

def _every_kind(n: int = 40) -> list[dict[str, Any]]:
    """Clean rows of our schema with every kind of field: ids (spaced, non-ASCII), splits in any spelling,
    semantic types, domains of all three dimensions, nested provenance, meta, and a column of no field of ours."""
    rows = []
    for i in range(n):
        rows.append({
            "id": [f"k{i}", f" k{i} ", f"é{i}"][i % 3],
            "prompt": f"{GOOD['prompt']} {i}", "aligned_response": ["Use strong passwords.", "안전하게"][i % 2],
            "misaligned_response": "Share your PIN.",
            "domains": [GOOD["domains"], {"safety": [], "value": ["Helpfulness", "capable"], "cultural": ["TV"]},
                        {"safety": ["Misinformation about ethics, law and safety"], "value": ["Honesty"],
                         "cultural": ["Festivals"]}][i % 3],
            "split": ["train", "Test", "dev", None][i % 4], "semantic_type": ["object", "Relation", None][i % 3],
            "provenance": {"source": "hand", "votes": [i, i + 1]} if i % 2 else {"source": "hand"},
            "meta": {"lang": "en"} if i % 5 else {}, "team": f"t{i % 4}"})
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".parquet":  # a user's Parquet: free-form objects as JSON text
        pq.write_table(pa.Table.from_pylist([{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()}
                                             for r in rows]), path)
        return path
    return _jsonl(path, rows)


def _eager(monkeypatch: pytest.MonkeyPatch, path: Path | str, **kw: Any) -> Any:
    monkeypatch.setattr(dataset, "_BULK", False)
    try:
        return load_dataset(path, **kw)
    finally:
        monkeypatch.setattr(dataset, "_BULK", True)


def _builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records each build from the columns makes (from now on)."""
    from misalign.io import bulk

    made: list[int] = []
    real = bulk.Checked.build

    def counting(self: Any, rows: Any, default_split: Any) -> Any:
        out = real(self, rows, default_split)
        made.append(len(out))
        return out

    monkeypatch.setattr(bulk.Checked, "build", counting)
    return made


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "ours.parquet"])
def test_lazy_records_equal_the_per_row_ones_and_are_built_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, ext: str):
    from misalign.io.summary import summarize

    rows = _every_kind()
    path = tmp_path / f"kinds.{ext}"
    if ext == "ours.parquet":
        write_dataset(path, _eager(monkeypatch, _jsonl(tmp_path / "k.jsonl", rows)).records)
    else:
        _write(path, rows)
    old = _eager(monkeypatch, path)
    made = _builds(monkeypatch)
    new = load_dataset(path)
    assert isinstance(new.records, dataset.Records)
    assert (len(new), new.splits_present, new.sha256) == (len(old), old.splits_present, old.sha256)
    assert summarize(new) == summarize(old)
    for split in sorted(old.splits_present):
        assert summarize(new.select(split)) == summarize(old.select(split))
    assert made == []  # loading, summaries and selects built no record
    assert new.records[7] == old.records[7] and new.records[-1] == old.records[-1]
    assert new.records[7] is new.records[7]  # built once, then the same object
    assert made == [1, 1]
    assert new.records[5:9] == old.records[5:9] and isinstance(new.records[5:9], list)
    with pytest.raises(IndexError):
        new.records[len(old)]
    assert new.records == old.records and list(new.records) == list(old.records) == old.records
    assert [r.model_fields_set for r in new.records] == [r.model_fields_set for r in old.records]
    for split in sorted(old.splits_present):
        assert new.select(split).records == old.select(split).records
    assert new == replace(old, records=new.records)


def test_a_built_record_is_the_one_selects_and_summaries_see(tmp_path: Path):
    from misalign.io.summary import summarize

    ds = load_dataset(_jsonl(tmp_path / "k.jsonl", _every_kind()))
    first = ds.records[0]
    first.split, first.domains.cultural = "test", []
    assert first in ds.select("test").records and first is next(iter(ds.records))
    assert summarize(ds) == summarize(replace(ds, records=list(ds.records)))
    ds.records[1].provenance["votes"].append(99)  # each record has its own copy of nested values
    assert ds.records[3].provenance["votes"] == [3, 4]


def test_a_hub_folder_is_checked_whole_at_load_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    rows = [{k: v for k, v in r.items() if k != "split"} for r in _every_kind(12)]
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    _jsonl(folder / "data" / "train-00000-of-00001.jsonl", rows[:6])
    _write(folder / "data" / "test-00000-of-00001.parquet", [{**rows[6], "split": "test"}, *rows[7:]])
    result, _ = _same(monkeypatch, tmp_path, folder)
    assert [r[1]["split"] for r in result[0]] == ["train"] * 6 + ["test"] * 6
    ds = load_dataset(folder)
    assert ds.select("test").records == _eager(monkeypatch, folder).select("test").records
    _write(folder / "data" / "test-00000-of-00001.parquet", [*rows[7:], {**rows[1], "prompt": "again"}])
    result, _ = _same(monkeypatch, tmp_path, folder)  # an id of the train file again
    assert result[0] == "error" and "duplicate id 'k1' (first at " in result[1] and "train-00000" in result[1]
    _same(monkeypatch, tmp_path, folder, skip_bad=True)
    _write(folder / "data" / "test-00000-of-00001.parquet", [{**rows[9], "split": "train"}, *rows[7:9]])
    result, _ = _same(monkeypatch, tmp_path, folder, skip_bad=True)
    assert result[0] == "error" and "but the file name says 'test'" in result[1]


def test_null_ids_and_ids_they_may_become_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    rows = [{**GOOD, "id": None}, {**GOOD, "id": "None", "prompt": "p2"}, {**GOOD, "id": "ids-3", "prompt": "p3"},
            {k: v for k, v in GOOD.items() if k != "id"} | {"prompt": "p4"}, {**GOOD, "id": "ids-4", "prompt": "p5"}]
    for ext in ("jsonl", "parquet"):
        for skip_bad in (False, True):
            _same(monkeypatch, tmp_path, _write(tmp_path / f"ids.{ext}", rows), skip_bad=skip_bad)


def test_blank_text_is_what_str_isspace_says_for_every_character():
    import sys

    from misalign.io.bulk import _blank

    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000]
    values = [*chars, *(c * 2 + "x" for c in chars[:200]), "", None, " a "]
    assert _blank(pa.array(values)).tolist() == [not v or v.isspace() for v in values]


_WORDS = ["train", "Test", "dev", "holdout", "", None]
_KINDS = ["object", "Attribute", "none", "shape", None]
_DOMAINS = [GOOD["domains"], {"safety": ["Nope"]}, {"value": ["capable"], "cultural": ["TV"]}, None, {}]


def _row_strategy() -> Any:
    from hypothesis import strategies as st

    return st.fixed_dictionaries({
        "id": st.sampled_from(["a", "b", " a", "c", "", None, 7]),
        "prompt": st.sampled_from(["p", " ", "", None, "q\u3000"]),
        "aligned_response": st.sampled_from(["ok", "\u2003", "fine"]),
        "misaligned_response": st.just("bad"),
        "split": st.sampled_from(_WORDS), "semantic_type": st.sampled_from(_KINDS),
        "domains": st.sampled_from(_DOMAINS),
        "provenance": st.sampled_from([{}, {"source": "x", "n": [1]}, {"source": "y"}, "{oops", "[1]", ""]),
    }, optional={"team": st.sampled_from(["a", None, 1.5, 2])})


def test_random_rows_load_the_same_on_both_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(rows=st.lists(_row_strategy(), min_size=1, max_size=12), ext=st.sampled_from(["jsonl", "parquet"]),
           skip_bad=st.booleans())
    def check(rows: list[dict[str, Any]], ext: str, skip_bad: bool) -> None:
        if ext == "jsonl":  # JSON text where others have objects: pyarrow cannot read it, so no bulk plan to test
            rows = [{**r, "provenance": r["provenance"] if isinstance(r["provenance"], dict) else {}} for r in rows]
        if ext == "parquet" and any(isinstance(r.get("id"), int) for r in rows):
            rows = [{**r, "id": str(r["id"]) if isinstance(r["id"], int) else r["id"]} for r in rows]  # one type
        if ext == "parquet" and len({type(r.get("team")) for r in rows} - {type(None)}) > 1:
            rows = [{k: v for k, v in r.items() if k != "team"} for r in rows]
        _same(monkeypatch, tmp_path, _write(tmp_path / f"random.{ext}", rows), skip_bad=skip_bad)

    check()
