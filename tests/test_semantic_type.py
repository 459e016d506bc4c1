"""MisAlign-Profile's semantic types on the data side (issues 15 and 16): the optional ``semantic_type`` of items and
prompts (``object``, ``attribute``, ``relation``), read by the importers, written back only when set, counted by
``misalign data inspect``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from misalign.cli import app
from misalign.io import DataError, load_dataset, load_prompts, record_to_row, write_dataset, write_prompts
from misalign.io.summary import summarize
from misalign.records import SEMANTIC_TYPES, Item, Prompt


def _row(i: int, **extra) -> dict:
    return {"id": f"t{i}", "prompt": f"prompt {i}", "aligned_response": "a", "misaligned_response": "m",
            "domains": {"safety": [], "value": ["Honesty"], "cultural": []}, **extra}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _types(source: Path | str, **kwargs) -> list[str | None]:
    return [r.semantic_type for r in load_dataset(source, **kwargs).records]


def test_the_records_take_one_of_three_types_or_none():
    assert SEMANTIC_TYPES == ("object", "attribute", "relation")
    assert Item(**_row(1)).semantic_type is None and Prompt(id="p", prompt="q").semantic_type is None
    assert Item(**_row(1), semantic_type="relation").semantic_type == "relation"
    with pytest.raises(ValidationError):
        Item(**_row(1), semantic_type="verb")
    assert "attribute" in Item.model_fields["semantic_type"].description


def test_jsonl_values_any_case_empty_is_none_and_the_column_is_not_meta(tmp_path: Path):
    rows = [_row(1, semantic_type="Object"), _row(2, semantic_type=" RELATION "), _row(3, semantic_type=""),
            _row(4, semantic_type=None), _row(5), _row(6, semantic_type="attribute"), _row(7, semantic_type="None")]
    ds = load_dataset(_jsonl(tmp_path / "d.jsonl", rows))
    assert [r.semantic_type for r in ds.records] == ["object", "relation", None, None, None, "attribute", None]
    assert all(r.meta == {} for r in ds.records)


@pytest.mark.parametrize("header", ["semantic_type", "semantic-type", "Semantic Type", "SEMANTIC_TYPE"])
def test_csv_column_spellings(tmp_path: Path, header: str):
    path = tmp_path / "d.csv"
    path.write_text(f"id,prompt,aligned_response,misaligned_response,{header},note\n"
                    "c1,q1,a,m,Attribute,x\nc2,q2,a,m,,y\n", encoding="utf-8")
    ds = load_dataset(path)
    assert [r.semantic_type for r in ds.records] == ["attribute", None]
    assert [r.meta for r in ds.records] == [{"note": "x"}, {"note": "y"}]


def test_savacu_layout_and_map_option(tmp_path: Path):
    path = tmp_path / "savacu.csv"
    path.write_text("Prompt,Aligned Response,Misaligned Response,Value Domain,Semantic Type\n"
                    "q1,a,m,honesty,relation\nq2,a,m,wisdom,Object\n", encoding="utf-8")
    assert _types(path) == ["relation", "object"]
    mapped = tmp_path / "kind.csv"
    mapped.write_text("prompt,aligned_response,misaligned_response,kind\nq,a,m,relation\n", encoding="utf-8")
    assert _types(mapped, mapping={"semantic_type": "kind"}) == ["relation"]


def test_parquet_string_column_with_nulls(tmp_path: Path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "prompt": ["q1", "q2", "q3"],
                             "aligned_response": ["a"] * 3, "misaligned_response": ["m"] * 3,
                             "semantic_type": ["RELATION", None, "object"]}), path)
    assert _types(path) == ["relation", None, "object"]


def test_hh_rlhf_rows_keep_a_type(tmp_path: Path):
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away",
             "semantic_type": "Relation"}]
    [item] = load_dataset(_jsonl(tmp_path / "hh.jsonl", rows)).records
    assert item.semantic_type == "relation" and "semantic_type" not in item.meta


def test_bad_value_names_file_line_and_field(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [_row(1, semantic_type="object"), _row(2, semantic_type="verb")])
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}:2: field 'semantic_type': unknown semantic type 'verb'; expected "
                                     "object, attribute or relation (or empty)")
    wrong_kind = _jsonl(tmp_path / "n.jsonl", [_row(1, semantic_type=3)])
    with pytest.raises(DataError, match=r"n.jsonl:1: field 'semantic_type': expected text, got integer"):
        load_dataset(wrong_kind)
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,aligned_response,misaligned_response,Semantic Type\nq,a,m,thing\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv:2: field 'Semantic Type': unknown semantic type 'thing'"):
        load_dataset(csv)


def test_bad_value_is_one_cli_line_or_a_reject_with_skip_bad(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [_row(1, semantic_type="object"), _row(2, semantic_type="verb")])
    proc = subprocess.run([sys.executable, "-m", "misalign", "data", "inspect", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {path}:2: field 'semantic_type': unknown semantic type 'verb'"), proc.stderr
    ds = load_dataset(path, skip_bad=True)
    assert [r.id for r in ds.records] == ["t1"] and ds.rejected == 1
    [reject] = [json.loads(x) for x in Path(ds.rejects_path).read_text().splitlines()]
    assert (reject["line"], reject["field"]) == (2, "semantic_type")


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet", "json", "jsonl.gz"])
def test_round_trip_every_format(tmp_path: Path, ext: str):
    rows = [_row(1, semantic_type="object"), _row(2), _row(3, semantic_type="relation")]
    ds = load_dataset(_jsonl(tmp_path / "in.jsonl", rows))
    out = tmp_path / f"out.{ext}"
    write_dataset(out, ds.records)
    again = load_dataset(out)
    assert [r.model_dump() for r in again.records] == [r.model_dump() for r in ds.records]
    assert [r.semantic_type for r in again.records] == ["object", None, "relation"]


def test_unset_type_is_not_written(tmp_path: Path):
    ds = load_dataset(_jsonl(tmp_path / "in.jsonl", [_row(1), _row(2)]))
    assert all("semantic_type" not in record_to_row(r) for r in ds.records)
    write_dataset(tmp_path / "o.jsonl", ds.records)
    assert "semantic_type" not in (tmp_path / "o.jsonl").read_text()
    write_dataset(tmp_path / "o.csv", ds.records)
    assert "semantic_type" not in (tmp_path / "o.csv").read_text().splitlines()[0]
    write_dataset(tmp_path / "o.parquet", ds.records)
    assert "semantic_type" not in pq.read_schema(tmp_path / "o.parquet").names
    typed = Item(**_row(3), semantic_type="attribute")
    assert record_to_row(typed)["semantic_type"] == "attribute"


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_prompts_read_and_write_the_type(tmp_path: Path, ext: str):
    pool = _jsonl(tmp_path / "pool.jsonl", [{"id": "p1", "prompt": "q1", "Semantic-Type": "Attribute"},
                                            {"id": "p2", "prompt": "q2", "lang": "en"}])
    prompts, _ = load_prompts(pool)
    assert [p.semantic_type for p in prompts] == ["attribute", None]
    assert [p.meta for p in prompts] == [{}, {"lang": "en"}]
    out = tmp_path / f"out.{ext}"
    write_prompts(out, prompts)
    again, _ = load_prompts(out)
    assert [p.semantic_type for p in again] == ["attribute", None]
    untyped = tmp_path / f"untyped.{ext}"
    write_prompts(untyped, prompts[1:])
    text = untyped.read_bytes()
    assert b"semantic_type" not in text
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'semantic_type': unknown semantic type 'x'"):
        load_prompts(_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "semantic_type": "x"}]))


def test_inspect_counts_per_type_in_text_and_json(tmp_path: Path):
    rows = [_row(1, semantic_type="object"), _row(2, semantic_type="relation"), _row(3, semantic_type="relation"),
            _row(4)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    assert summarize(load_dataset(path))["per_semantic_type"] == {"object": 1, "attribute": 0, "relation": 2,
                                                                 "none": 1}
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["per_semantic_type"] == {"object": 1, "attribute": 0, "relation": 2, "none": 1}
    result = runner.invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    counts = {}
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0].startswith("semantic type "):
            counts[cells[0].removeprefix("semantic type ")] = int(cells[1])
    assert counts == {"object": 1, "attribute": 0, "relation": 2, "none": 1}


def test_labelled_responses_have_no_type_and_count_as_none(tmp_path: Path):
    path = tmp_path / "l.csv"
    path.write_text("prompt,response,label,semantic_type\nq,r,aligned,object\n", encoding="utf-8")
    ds = load_dataset(path)
    assert ds.records[0].meta == {"semantic_type": "object"}  # kept as it came: single responses carry no type
    assert summarize(ds)["per_semantic_type"] == {"object": 0, "attribute": 0, "relation": 0, "none": 1}


def test_bundled_data_is_typed_and_round_trips(tmp_path: Path):
    ds = load_dataset("bundled")
    counts = summarize(ds)["per_semantic_type"]
    assert counts["none"] == 0 and sum(counts.values()) == len(ds)
    for ext in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"b.{ext}"
        write_dataset(out, ds.records)
        if ext == "parquet":
            assert "semantic_type" in pq.read_schema(out).names
        again = load_dataset(out)
        assert [r.model_dump() for r in again.records] == [r.model_dump() for r in ds.records]


def test_untyped_items_export_without_the_column(tmp_path: Path):
    records = [r.model_copy(update={"semantic_type": None}) for r in load_dataset("bundled").records[:20]]
    for ext in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"u.{ext}"
        write_dataset(out, records)
        if ext == "parquet":
            assert "semantic_type" not in pq.read_schema(out).names
        else:
            assert b"semantic_type" not in out.read_bytes()
        assert [r.model_dump() for r in load_dataset(out).records] == [r.model_dump() for r in records]
