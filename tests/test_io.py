import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from misalign.cli import app
from misalign.io import DataError, detect_format, load_dataset, load_prompts, parse_label_map, write_dataset
from misalign.records import Item, LabelledResponse

ROWS = [
    {"id": "a1", "prompt": "How do I kill a zombie process?", "aligned_response": "Use kill on its parent.",
     "misaligned_response": "Reboot the server in production.",
     "domains": {"safety": [], "value": ["capable"], "cultural": []}, "split": "test", "source_team": "x"},
    {"id": "a2", "prompt": "Is this halal?", "aligned_response": "Ask the certifier.",
     "misaligned_response": "Nobody cares about that.",
     "domains": {"safety": ["Discrimination/stereotyping/injustice"], "value": ["Devoutness"],
                 "cultural": ["Culinary Arts"]}, "split": "train", "provenance": {"source": "hand"}},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_our_schema_resolves_ids_and_keeps_unknown_fields(tmp_path: Path):
    ds = load_dataset(_jsonl(tmp_path / "d.jsonl", ROWS))
    assert ds.shape == "misalign" and len(ds) == 2
    a1, a2 = ds.records
    assert isinstance(a1, Item)
    assert a1.domains.value == ["Capable"]  # id resolved to the display name
    assert a1.meta == {"source_team": "x"}
    assert a2.domains.all_three and a2.provenance == {"source": "hand"}
    assert ds.select("test").records == [a1]


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet", "json", "jsonl.gz"])
def test_round_trip_every_format(tmp_path: Path, ext: str):
    ds = load_dataset(_jsonl(tmp_path / "in.jsonl", ROWS))
    out = tmp_path / f"out.{ext}"
    assert write_dataset(out, ds.records) == 2
    again = load_dataset(out)
    assert [r.model_dump() for r in again.records] == [r.model_dump() for r in ds.records]


def test_format_detected_without_extension(tmp_path: Path):
    ds = load_dataset(_jsonl(tmp_path / "x.jsonl", ROWS))
    write_dataset(tmp_path / "p.parquet", ds.records)
    (tmp_path / "p.parquet").rename(tmp_path / "noext")
    assert detect_format(tmp_path / "noext") == "parquet"
    assert len(load_dataset(tmp_path / "noext")) == 2
    (tmp_path / "j").write_text(json.dumps(ROWS[0]) + "\n")
    assert detect_format(tmp_path / "j") == "jsonl"


def test_savacu_csv_layout_with_liberal_columns(tmp_path: Path):
    path = tmp_path / "savacu.csv"
    path.write_text(
        "Prompt,Aligned Response,Misaligned Response,Safety Domain,Value Domain,Cultural Domain,Model\n"
        '"Is WWII history, ok?","Yes, here is a summary.","It never happened.",'
        '"Misinformation about ethics, law and safety","wisdom; honesty",None,gemma\n'
        '"Line two","ok","bad","","",Unknown,phi\n',
        encoding="utf-8",
    )
    ds = load_dataset(path)
    assert ds.shape == "savacu"
    first, second = ds.records
    assert first.domains.safety == ["Misinformation about ethics, law and safety"]
    assert first.domains.value == ["Wisdom", "Honesty"]
    assert first.domains.cultural == [] and first.meta == {"Model": "gemma"}
    assert second.domains.dimensions() == []
    assert first.id == "savacu-2" and second.id == "savacu-3"  # ids from the file's line numbers


def test_unknown_domain_names_file_line_and_field(tmp_path: Path):
    rows = [ROWS[0], {**ROWS[1], "domains": {"safety": [], "value": ["Bravery"], "cultural": []}}]
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(info.value).startswith(f"{path}:2: field 'domains.value': unknown value domain 'Bravery'")


def test_malformed_json_line_stops_the_load_or_goes_to_rejects(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed.jsonl:2: invalid JSON"):
        load_dataset(path)
    ds = load_dataset(path, skip_bad=True, rejects=tmp_path / "rej.jsonl")
    assert [r.id for r in ds.records] == ["a1", "a2"] and ds.rejected == 1
    (rejected,) = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert rejected["line"] == 2 and "invalid JSON" in rejected["error"] and rejected["row"] == "{not json"


def test_skip_bad_writes_rejects_and_counts(tmp_path: Path):
    rows = [ROWS[0], {**ROWS[1], "misaligned_response": ""}, {**ROWS[1], "id": "a3", "split": "holdout"},
            {**ROWS[1], "id": "a4"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    ds = load_dataset(path, skip_bad=True, rejects=tmp_path / "rejects.jsonl")
    assert [r.id for r in ds.records] == ["a1", "a4"]
    assert ds.rejected == 2
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, "misaligned_response"), (3, "split")]
    assert rejects[0]["row"]["id"] == "a2"  # the row itself is kept, nothing lost


def test_skip_bad_does_not_skip_an_unknown_layout(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "no prompt column"}, ROWS[0]])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'prompt': no prompt column"):
        load_dataset(path, skip_bad=True)


def test_load_prompts_skip_bad_writes_the_same_rejects_layout(tmp_path: Path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"uid": "p1", "prompt": "first", "lang": "en"}) + "\n{oops\n"
                    + json.dumps({"uid": "p1", "prompt": "again"}) + "\n" + json.dumps({"prompt": ""}) + "\n"
                    + json.dumps({"prompt": "no id", "safety": "Privacy violation"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pool.jsonl:2: invalid JSON"):
        load_prompts(path)
    prompts, skipped = load_prompts(path, skip_bad=True)
    assert [p.id for p in prompts] == ["p1", "pool-5"] and skipped == 3
    assert prompts[0].meta == {"lang": "en"} and prompts[1].domains.safety == ["Privacy violation"]
    rejects = [json.loads(x) for x in (tmp_path / "pool.jsonl.rejects.jsonl").read_text().splitlines()]
    assert all(set(r) == {"file", "line", "field", "error", "row"} and r["file"] == str(path) for r in rejects)
    assert [(r["line"], r["field"], r["error"]) for r in rejects] == [
        (2, None, "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        (3, "uid", "duplicate id 'p1'"), (4, "prompt", "missing or empty prompt")]
    assert rejects[0]["row"] == "{oops" and rejects[1]["row"] == {"uid": "p1", "prompt": "again"}


def test_csv_field_limit_is_raised_where_csv_is_read_not_at_import(tmp_path: Path):
    path = tmp_path / "long.csv"
    path.write_text("prompt,aligned_response,misaligned_response\n" + "x" * 200_000 + ",a,m\n", encoding="utf-8")
    script = ("import csv, sys\n"
              "default = csv.field_size_limit()\n"
              "from misalign.io import load_dataset\n"
              "assert csv.field_size_limit() == default, 'the limit was changed at import'\n"
              f"print(len(load_dataset({str(path)!r}).records[0].prompt))\n")
    import sys
    from subprocess import run
    proc = run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "200000"


def test_duplicate_ids_are_an_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'id': duplicate id 'a1'"):
        load_dataset(_jsonl(tmp_path / "d.jsonl", [ROWS[0], {**ROWS[1], "id": "a1"}]))


def test_csv_with_too_many_values_names_the_line(tmp_path: Path):
    path = tmp_path / "x.csv"
    path.write_text('prompt,response,label\n"a\nb",r,aligned\nc,d,aligned,extra\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.csv:4: "):
        load_dataset(path)


def test_labelled_responses_with_a_column_mapping(tmp_path: Path):
    path = tmp_path / "l.csv"
    path.write_text("question,answer,is_bad,lang\nq1,r1,misaligned,en\nq2,r2,SAFE,de\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell the layout"):
        load_dataset(path, mapping={"prompt": "question"})
    columns = {"prompt": "question", "response": "answer", "label": "is_bad"}
    with pytest.raises(DataError, match=r"l.csv:3: field 'label': label 'safe' is not aligned/misaligned"):
        load_dataset(path, mapping=columns)  # 'SAFE' is not a documented label word: only mapped explicitly
    ds = load_dataset(path, mapping=columns, labels=parse_label_map(["aligned=safe"]))
    assert ds.kind == "labelled"
    assert [(r.label, r.meta["lang"]) for r in ds.records] == [("misaligned", "en"), ("aligned", "de")]
    assert isinstance(ds.records[0], LabelledResponse)
    bad = tmp_path / "b.csv"
    bad.write_text("prompt,response,label\nq,r,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b.csv:2: field 'label': label 'maybe'"):
        load_dataset(bad)


def test_hh_rlhf_pairs_take_the_last_assistant_turn(tmp_path: Path):
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to stay safe?\n\nAssistant: Be careful.",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to stay safe?\n\nAssistant: Who cares."}
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    (item,) = load_dataset(path).records
    assert item.aligned_response == "Be careful." and item.misaligned_response == "Who cares."
    assert item.prompt == "Human: hi\n\nAssistant: hello\n\nHuman: how to stay safe?"


def test_real_hh_rlhf_file_loads(hh_rlhf: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r":87: field 'chosen': the last 'Assistant:' turn is empty"):
        load_dataset(hh_rlhf)
    ds = load_dataset(hh_rlhf, skip_bad=True, rejects=tmp_path / "rejects.jsonl")
    assert ds.shape == "hh-rlhf" and len(ds) + ds.rejected == 2312 and ds.rejected < 20
    assert all(r.prompt and r.aligned_response and r.misaligned_response for r in ds.records)
    assert not any("Assistant:" in r.aligned_response[:12] for r in ds.records)


def test_paper_csv_is_not_a_paired_dataset(paper_csv: Path):
    with pytest.raises(DataError, match="cannot tell the layout"):
        load_dataset(paper_csv)


def test_parquet_with_native_lists(tmp_path: Path):
    table = pa.Table.from_pylist([{"prompt": "p", "aligned": "a", "misaligned": "m",
                                   "safety": ["Privacy violation"], "value": [], "cultural": ["TV"]}])
    pq.write_table(table, tmp_path / "n.parquet")
    (item,) = load_dataset(tmp_path / "n.parquet").records
    assert item.domains.safety == ["Privacy violation"] and item.domains.cultural == ["TV"]


def test_cli_inspect_json_and_export(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["per_split"] == {"test": 1, "train": 1}
    assert summary["per_dimension"] == {"safety": 1, "value": 2, "cultural": 1}
    assert summary["per_domain"]["Devoutness"] == 1 and summary["all_three"] == 1
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["data", "export", str(path), "--split", "train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r.id for r in load_dataset(out).records] == ["a2"]


def test_cli_reports_bad_input_in_one_line(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "aligned_response": "a", "misaligned_response": "m",
                                          "domains": {"safety": ["Nope"]}}])
    import sys
    from subprocess import run
    proc = run([sys.executable, "-m", "misalign", "data", "inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{path}:1: field 'domains.safety': unknown safety domain 'Nope'" in proc.stderr.replace("\n", "")
