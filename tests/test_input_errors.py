"""Bad input files give one clear line (``error: file:line: ...``, exit 2), never a traceback or a silent partial
load: bytes that are not UTF-8, cut-off gzip streams, wrong Parquet types, undocumented label words, empty
files, ``--map`` naming a missing column (issue #12, rows 6, 7, 9, 12, 13, 15, 16, 17 and 20)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from misalign.cli import app
from misalign.io import (
    DataError,
    describe_labels,
    load_dataset,
    load_prompts,
    parse_label_map,
    read_rows,
    write_dataset,
    write_rows,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def _item(i: int, prompt: str | None = None) -> dict:
    return {"id": f"i{i}", "prompt": prompt or f"prompt {i}", "aligned_response": "a", "misaligned_response": "m"}


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``misalign ARGS`` in a real process (so the one-line error and exit code of ``main`` are what is seen)."""
    return subprocess.run([sys.executable, "-m", "misalign", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a command that failed on its input (exit 2, nothing else on stderr)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -- row 6: bytes that are not UTF-8 --------------------------------------------------------------------------

@pytest.fixture
def latin1_jsonl(tmp_path: Path) -> Path:
    """Three items; the second prompt written in latin-1 ('é' is the single byte 0xe9)."""
    path = tmp_path / "latin.jsonl"
    path.write_bytes(_jsonl_bytes([_item(1)]) + b'{"id": "i2", "prompt": "caf\xe9 au lait", "aligned_response": '
                     b'"a", "misaligned_response": "m"}\n' + _jsonl_bytes([_item(3)]))
    return path


@pytest.fixture
def latin1_csv(tmp_path: Path) -> Path:
    """A CSV whose second record spans lines 3-4 (a quoted newline) and has a latin-1 byte on line 4."""
    path = tmp_path / "latin.csv"
    path.write_bytes(b'prompt,aligned_response,misaligned_response\nfirst,a,m\n"two\nlines caf\xe9",a,m\nthird,a,m\n')
    return path


def test_latin1_jsonl_names_file_line_byte_and_column(latin1_jsonl: Path):
    with pytest.raises(DataError) as info:
        load_dataset(latin1_jsonl)
    assert str(info.value).startswith(f"{latin1_jsonl}:2: not valid UTF-8 (byte 0xe9 at column 28)")
    ds = load_dataset(latin1_jsonl, skip_bad=True)
    assert [r.id for r in ds.records] == ["i1", "i3"] and ds.rejected == 1
    (reject,) = [json.loads(x) for x in Path(ds.rejects_path or "").read_text(encoding="utf-8").splitlines()]
    assert reject["line"] == 2 and reject["error"] == "not valid UTF-8 (byte 0xe9 at column 28)"
    assert reject["row"].startswith('{"id": "i2", "prompt": "caf\\xe9 au lait"')  # the bytes kept, readable


def test_latin1_csv_record_spanning_lines_is_one_reject(latin1_csv: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r"latin.csv:4: not valid UTF-8 \(byte 0xe9 at column 10\)"):
        load_dataset(latin1_csv)
    ds = load_dataset(latin1_csv, skip_bad=True, rejects=tmp_path / "rej.jsonl")
    assert [r.prompt for r in ds.records] == ["first", "third"] and ds.rejected == 1
    (reject,) = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text(encoding="utf-8").splitlines()]
    assert reject["line"] == 4 and reject["row"]["prompt"] == "two\nlines caf\\xe9"
    prompts, skipped = load_prompts(latin1_csv, skip_bad=True, rejects=tmp_path / "rej2.jsonl")
    assert [p.prompt for p in prompts] == ["first", "third"] and skipped == 1


def test_a_csv_header_that_is_not_utf8_stops_even_with_skip_bad(tmp_path: Path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"pr\xf6mpt,aligned_response,misaligned_response\nq,a,m\n")
    with pytest.raises(DataError, match=r"h.csv:1: not valid UTF-8 \(byte 0xf6 at column 3\)"):
        load_dataset(path, skip_bad=True)


def test_a_json_document_that_is_not_utf8_names_line_and_column(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n  {"prompt": "ok", "aligned_response": "a", "misaligned_response": "\x81"}\n]\n')
    with pytest.raises(DataError, match=r"d.json:2: not valid UTF-8 \(byte 0x81 at column 69\)"):
        load_dataset(path)


@pytest.mark.parametrize("command", [
    ["data", "inspect", "{f}"],
    ["dedup", "-i", "{f}", "-o", "{d}/kept.jsonl", "--dropped", "{d}/dropped.jsonl"],
    ["classify", "-i", "{f}", "-o", "{d}/classified.jsonl"],
    ["eval", "--dataset", "{f}", "--out", "{d}/run"],
])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_commands_on_latin1_input_print_one_line_and_exit_2(command: list[str], kind: str, latin1_jsonl: Path,
                                                            latin1_csv: Path, tmp_path: Path):
    path = latin1_jsonl if kind == "jsonl" else latin1_csv
    line = _one_line_error(_cli(*(a.format(f=path, d=tmp_path) for a in command)))
    where = f"{path}:2" if kind == "jsonl" else f"{path}:4"
    assert line.startswith(f"error: {where}: not valid UTF-8 (byte 0xe9 at column ")


def test_skip_bad_on_latin1_input_rejects_the_row_for_inspect_and_dedup(latin1_jsonl: Path, tmp_path: Path):
    proc = _cli("data", "inspect", str(latin1_jsonl), "--json", "--skip-bad", "--rejects", str(tmp_path / "r1.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rejected"] == 1 and "1 malformed row(s) skipped" in proc.stderr
    proc = _cli("dedup", "-i", str(latin1_jsonl), "-o", str(tmp_path / "kept.jsonl"), "--dropped",
                str(tmp_path / "dropped.jsonl"), "--skip-bad", "--rejects", str(tmp_path / "r2.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "1 malformed row(s) skipped, written to" in proc.stderr and "kept 2" in proc.stdout
    assert json.loads((tmp_path / "r2.jsonl").read_text())["line"] == 2


def test_random_bytes_are_rejected_not_a_crash(tmp_path: Path):
    path = tmp_path / "noise.jsonl"
    path.write_bytes(bytes(range(0x80, 0x100)) * 4 + b"\n" + bytes(range(0xff, 0x7f, -1)) * 4 + b"\n")
    line = _one_line_error(_cli("data", "inspect", str(path)))
    assert line.startswith(f"error: {path}:1: not valid UTF-8 (byte 0x80 at column 1)")
    line = _one_line_error(_cli("data", "inspect", str(path), "--skip-bad"))
    assert line == f"error: {path}: no usable rows (2 rejected, see {path}.rejects.jsonl)"


# -- row 7: a gzip stream that ends early -----------------------------------------------------------------

@pytest.fixture
def truncated_gz(tmp_path: Path) -> tuple[Path, int]:
    """A gzipped JSONL of 4000 items cut in the middle, and how many complete rows it still holds."""
    data = gzip.compress(_jsonl_bytes([_item(i, f"prompt {i} " + "x" * (i % 97)) for i in range(4000)]))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with gzip.open(path, "rb") as fh:
        complete = 0
        try:
            for _ in fh:
                complete += 1
        except EOFError:
            pass
    return path, complete


def test_truncated_gzip_is_an_error_naming_the_rows_read(truncated_gz: tuple[Path, int]):
    path, complete = truncated_gz
    assert 0 < complete < 4000
    for skip_bad in (False, True):  # never a partial load, --skip-bad or not
        with pytest.raises(DataError) as info:
            load_dataset(path, skip_bad=skip_bad)
        assert str(info.value) == f"{path}: gzip stream ends early after {complete} rows"
    with pytest.raises(DataError, match="gzip stream ends early"):
        list(read_rows(path))
    line = _one_line_error(_cli("data", "inspect", str(path)))  # not click's bare "Aborted."
    assert line == f"error: {path}: gzip stream ends early after {complete} rows"


def test_truncated_gzip_without_extension_and_as_prompts(truncated_gz: tuple[Path, int], tmp_path: Path):
    path, complete = truncated_gz
    bare = tmp_path / "bare"
    bare.write_bytes(path.read_bytes()[:30])  # not even the first row survives
    with pytest.raises(DataError, match=r"bare: gzip stream ends early after 0 rows"):
        load_dataset(bare)
    with pytest.raises(DataError, match=rf"gzip stream ends early after {complete} rows"):
        load_prompts(path, skip_bad=True)


# -- row 9: a Parquet column of the wrong type ----------------------------------------------------------------

@pytest.fixture
def int_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": pa.array(range(10), pa.int64()), "aligned_response": ["a"] * 10,
                             "misaligned_response": ["m"] * 10}), path)
    return path


def test_parquet_int64_prompt_says_expected_text_got_int64(int_prompts: Path):
    with pytest.raises(DataError, match=r"ints.parquet:1: field 'prompt': expected text, got int64"):
        load_dataset(int_prompts)
    with pytest.raises(DataError, match=r"ints.parquet:1: field 'prompt': expected text, got int64"):
        load_prompts(int_prompts)
    mapped = int_prompts.with_name("mapped.parquet")
    pq.write_table(pa.table({"q": pa.array([1.5], pa.float32()), "aligned_response": ["a"],
                             "misaligned_response": ["m"]}), mapped)
    with pytest.raises(DataError, match=r"field 'prompt': expected text, got float"):  # the type under --map too
        load_dataset(mapped, mapping={"prompt": "q"})


def test_jsonl_number_prompt_says_expected_text(tmp_path: Path):
    path = tmp_path / "n.jsonl"
    path.write_text(json.dumps({**_item(1), "prompt": 7}) + "\n" + json.dumps({**_item(2), "prompt": ""}) + "\n"
                    + json.dumps(_item(3)) + "\n")
    ds = load_dataset(path, skip_bad=True)
    rejects = [json.loads(x) for x in Path(ds.rejects_path or "").read_text().splitlines()]
    assert [r["error"] for r in rejects] == ["expected text, got integer", "missing or empty text"]


def test_nothing_left_after_skip_bad_is_an_error_naming_the_rejects(int_prompts: Path, tmp_path: Path):
    rejects = tmp_path / "rej.jsonl"
    with pytest.raises(DataError) as info:
        load_dataset(int_prompts, skip_bad=True, rejects=rejects)
    assert str(info.value) == f"{int_prompts}: no usable rows (10 rejected, see {rejects})"
    assert len(rejects.read_text().splitlines()) == 10  # the rows are kept where the message says
    with pytest.raises(DataError, match=r"no usable rows \(10 rejected"):
        load_prompts(int_prompts, skip_bad=True, rejects=rejects)
    for command in (["eval", "--dataset", str(int_prompts), "--out", str(tmp_path / "run")],
                    ["classify", "-i", str(int_prompts), "-o", str(tmp_path / "c.jsonl")]):
        line = _one_line_error(_cli(*command, "--skip-bad", "--rejects", str(rejects)))
        assert line == f"error: {int_prompts}: no usable rows (10 rejected, see {rejects})"
    assert not (tmp_path / "run").exists()


# -- row 12: label words ------------------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["true", "false", "unsafe", "safe", "harmful", "harmless", "1", "0", "good",
                                  "bad", "chosen", "rejected"])
def test_only_documented_label_words_by_default(tmp_path: Path, word: str):
    path = tmp_path / "l.csv"
    path.write_text(f"prompt,response,label\nq0,r0,Misaligned\nq1,r1,{word}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: field 'label': label {word!r} is not aligned/misaligned")
    assert f"--label-map misaligned={word}" in message and f"--label-map aligned={word}" in message


def test_label_map_reads_other_words_either_way_round(tmp_path: Path):
    path = tmp_path / "l.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"r{i}", "label": label}
            for i, label in enumerate([1, 0, "UNSAFE", "safe", "aligned", True])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = parse_label_map(["misaligned=1,unsafe,true", "aligned=0, Safe"])
    assert [r.label for r in load_dataset(path, labels=labels).records] == [
        "misaligned", "aligned", "misaligned", "aligned", "aligned", "misaligned"]
    flipped = parse_label_map(["aligned=1,unsafe,true", "aligned=0,safe"])  # whatever the user says 1 means
    assert [r.label for r in load_dataset(path, labels=flipped).records][:2] == ["aligned", "aligned"]
    assert describe_labels(labels) == "aligned = aligned, 0, safe; misaligned = misaligned, 1, unsafe, true"


@pytest.mark.parametrize(("specs", "message"), [
    (["misaligned"], "takes aligned=WORD"),
    (["unsafe=1"], "takes aligned=WORD"),
    (["misaligned=1", "aligned=1"], "'1' already means misaligned"),
    (["misaligned=aligned"], "'aligned' already means aligned"),
    (["aligned=ok,,fine"], "an empty word"),
])
def test_label_map_specs_that_are_wrong(specs: list[str], message: str):
    with pytest.raises(ValueError, match=message):
        parse_label_map(specs)


def test_label_map_option_is_shared_by_the_loading_commands_and_prints_the_mapping(tmp_path: Path):
    path = tmp_path / "l.csv"
    path.write_text("prompt,response,label\nq0,r0,1\nq1,r1,0\nq2,r2,unsafe\n", encoding="utf-8")
    line = _one_line_error(_cli("data", "inspect", str(path)))
    assert line.startswith(f"error: {path}:2: field 'label': label '1' is not aligned/misaligned; say which it "
                           "means with --label-map misaligned=1 or --label-map aligned=1")
    mapped = ["--label-map", "misaligned=1,unsafe", "--label-map", "aligned=0"]
    proc = _cli("data", "inspect", str(path), "--json", *mapped)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["per_label"] == {"misaligned": 2, "aligned": 1}
    assert proc.stderr.strip() == "labels: aligned = aligned, 0; misaligned = misaligned, 1, unsafe"
    for command in (["data", "export", str(path), "--out", str(tmp_path / "x.jsonl")],
                    ["data", "split", str(path), "--out", str(tmp_path / "s.jsonl")],
                    ["eval", "--dataset", str(path), "--out", str(tmp_path / "run"), "--runs", "1", "--no-report"]):
        result = CliRunner().invoke(app, [*command, *mapped])
        assert result.exit_code == 0, (command, result.output)
        assert "labels: aligned = aligned, 0; misaligned = misaligned, 1, unsafe" in result.stderr
    proc = _cli("data", "inspect", str(path), "--label-map", "misaligned=1", "--label-map", "aligned=1")
    assert proc.returncode == 2 and "'1' already means misaligned" in proc.stderr and "Traceback" not in proc.stderr


# -- row 13: an empty file ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n"), ("header.csv",
                         b"prompt,aligned_response,misaligned_response\n"), ("list.json", b"[]"), ("zero.json", b""),
                         ("zero.parquet", b""), ("empty.jsonl.gz", gzip.compress(b"", mtime=0))])
def test_every_empty_file_has_no_rows(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    for load in (load_dataset, load_prompts):
        with pytest.raises(DataError) as info:
            load(path)
        assert str(info.value) == f"{path}: no rows"


EMPTY_COMMANDS = {
    "inspect": ["data", "inspect", "{f}"],
    "export": ["data", "export", "{f}", "--out", "{d}/x.parquet"],
    "split": ["data", "split", "{f}", "--out", "{d}/x.jsonl"],
    "eval": ["eval", "--dataset", "{f}", "--out", "{d}/run"],
    "classify": ["classify", "-i", "{f}", "-o", "{d}/x.parquet"],
    "dedup": ["dedup", "-i", "{f}", "-o", "{d}/x.parquet", "--dropped", "{d}/y.parquet"],
    "expand": ["expand", "-i", "{f}", "-o", "{d}/x.parquet", "--generator", "openai/gen", "--target-per-domain",
               "5", "--base-url", "http://127.0.0.1:9/v1"],
    "respond": ["respond", "-i", "{f}", "-o", "{d}/x.jsonl", "--generator", "openai/gen", "--base-url",
                "http://127.0.0.1:9/v1"],
    "filter": ["filter", "-i", "{f}", "-o", "{d}/x.jsonl", "--judge", "openai/judge", "--generator", "openai/gen",
               "--base-url", "http://127.0.0.1:9/v1"],
    "build": ["build", "-i", "{f}", "-o", "{d}/build"],
}


@pytest.mark.parametrize("command", EMPTY_COMMANDS)
def test_an_empty_file_is_the_same_error_everywhere(tmp_path: Path, command: str):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    args = [a.format(f=path, d=tmp_path) for a in EMPTY_COMMANDS[command]]
    assert _one_line_error(_cli(*args)) == f"error: {path}: no rows"


@pytest.mark.parametrize("command", ["classify", "build"])
def test_an_empty_file_fails_before_any_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str):
    from misalign.models import embedded

    def no_model(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model was loaded for an empty input")

    monkeypatch.setattr(embedded, "load_minilm", no_model)
    monkeypatch.setattr(embedded, "load_wordllama", no_model)
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = CliRunner().invoke(app, [a.format(f=path, d=tmp_path) for a in EMPTY_COMMANDS[command]])
    assert isinstance(result.exception, DataError), result.exception
    assert str(result.exception) == f"{path}: no rows"


# -- row 15: a bad row says how far the load got and how to go on ---------------------------------------------

def test_a_stopped_load_says_how_many_rows_were_read_and_suggests_skip_bad(tmp_path: Path):
    good = "\n\nHuman: hi\n\nAssistant: hello"
    rows = [{"chosen": good + f" {i}", "rejected": good + f" no {i}"} for i in range(3)]
    rows.insert(2, {"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": good})
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert str(info.value) == (f"{path}:3: field 'chosen': the last 'Assistant:' turn is empty; stopped after 2 "
                               "good rows (--skip-bad writes bad rows to a rejects file and goes on)")
    assert len(load_dataset(path, skip_bad=True)) == 3


def test_the_readme_export_example_works_on_the_real_hh_rlhf_file(hh_rlhf: Path, tmp_path: Path):
    (example,) = [x for x in README.read_text().splitlines() if "data export hh.jsonl.gz" in x]
    assert "--skip-bad" in example
    line = _one_line_error(_cli("data", "export", str(hh_rlhf), "--out", str(tmp_path / "hh.parquet")))
    assert "stopped after 86 good rows" in line and "--skip-bad" in line
    proc = _cli("data", "export", str(hh_rlhf), "--out", str(tmp_path / "hh.parquet"), "--skip-bad", "--rejects",
                str(tmp_path / "rej.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert len(load_dataset(tmp_path / "hh.parquet")) + len((tmp_path / "rej.jsonl").read_text().splitlines()) == 2312


# -- row 16: the column of a cut-off JSONL line ---------------------------------------------------------------

def test_a_truncated_jsonl_line_reports_the_decoders_column(tmp_path: Path):
    cut = '{"id": "i2", "prompt": "p", "aligned_response": "a"'
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(_item(1)) + "\n" + cut + "\n" + json.dumps(_item(3)) + "\n")
    column = len(cut) + 1  # where the ',' or '}' should have been, not column 1 of a next line
    with pytest.raises(DataError, match=rf"cut.jsonl:2: invalid JSON: Expecting ',' delimiter \(column {column}\)"):
        load_dataset(path)
    path.write_text(json.dumps(_item(1)) + "\n" + cut)  # the last line, without a newline
    with pytest.raises(DataError, match=rf"cut.jsonl:2: invalid JSON: .*\(column {column}\)"):
        load_dataset(path)


# -- row 17: the split really used and the rejected count travel with the dataset ----------------------------

def test_select_says_which_split_was_used_and_keeps_the_rejected_count(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text(_jsonl_bytes([_item(1), _item(2)]).decode() + "{broken\n")
    ds = load_dataset(path, skip_bad=True)
    assert ds.split == "all"
    for asked in ("test", "train", "all", None):
        chosen = ds.select(asked)
        assert chosen.split == "all" and len(chosen) == 2  # no splits: evaluated whole, and said so
        assert chosen.rejected == 1 and chosen.rejects_path == ds.rejects_path
    split = tmp_path / "s.jsonl"
    split.write_text(_jsonl_bytes([{**_item(1), "split": "test"}, {**_item(2), "split": "train"}]).decode())
    both = load_dataset(split)
    assert both.select("test").split == "test" and [r.id for r in both.select("test").records] == ["i1"]
    assert both.select("all").split == "all" and both.split == "all"
    with pytest.raises(DataError, match=r"s.jsonl: no split 'validation'; it has \['test', 'train'\]"):
        both.select("validation")


# -- row 20: options every loading command shares, --map checked, output file modes -------------------------

def test_map_naming_a_missing_column_is_an_error(tmp_path: Path):
    path = tmp_path / "q.csv"
    path.write_text("question,good,bad\nq,a,m\n")
    with pytest.raises(DataError) as info:
        load_dataset(path, mapping={"prompt": "question", "aligned_response": "nosuchcol"})
    assert str(info.value) == (f"{path}: --map aligned_response=nosuchcol: the file has no column 'nosuchcol'; "
                               "its columns are ['bad', 'good', 'question']")
    with pytest.raises(DataError, match="the file has no column 'nosuchcol'"):
        load_prompts(path, mapping={"prompt": "nosuchcol"}, skip_bad=True)
    line = _one_line_error(_cli("dedup", "-i", str(path), "-o", str(tmp_path / "k.jsonl"), "--dropped",
                                str(tmp_path / "d.jsonl"), "--map", "prompt=nosuchcol"))
    assert "--map prompt=nosuchcol: the file has no column 'nosuchcol'" in line


def test_dedup_and_data_split_take_the_shared_load_options(tmp_path: Path):
    pool = tmp_path / "pool.csv"
    pool.write_text("question,id\nfirst prompt,p1\nsecond prompt,p1\nthird prompt here,p3\n")
    runner = CliRunner()
    result = runner.invoke(app, ["dedup", "-i", str(pool), "-o", str(tmp_path / "kept.jsonl"), "--dropped",
                                 str(tmp_path / "dropped.jsonl"), "--map", "prompt=question", "--skip-bad",
                                 "--rejects", str(tmp_path / "dedup_rejects.jsonl")])
    assert result.exit_code == 0, result.output
    assert "kept 2" in result.stdout
    assert json.loads((tmp_path / "dedup_rejects.jsonl").read_text())["error"] == "duplicate id 'p1'"
    items = tmp_path / "items.csv"
    items.write_text("question,good,bad\n" + "".join(f"q{i},a,m\n" for i in range(10)) + "q10,,m\n")
    result = runner.invoke(app, ["data", "split", str(items), "--out", str(tmp_path / "split.jsonl"), "--map",
                                 "prompt=question", "--map", "aligned_response=good", "--map",
                                 "misaligned_response=bad", "--skip-bad", "--rejects", str(tmp_path / "sr.jsonl")])
    assert result.exit_code == 0, result.output
    assert len(load_dataset(tmp_path / "split.jsonl")) == 10
    assert json.loads((tmp_path / "sr.jsonl").read_text())["field"] == "aligned_response"


def test_outputs_of_write_rows_honour_the_umask(tmp_path: Path, latin1_jsonl: Path):
    old = os.umask(0o022)
    try:
        write_rows(tmp_path / "results.jsonl", [{"a": 1}])
        ds = load_dataset(latin1_jsonl, skip_bad=True, rejects=tmp_path / "rejects.jsonl")
        write_dataset(tmp_path / "export.parquet", ds.records)
        os.umask(0o077)
        write_rows(tmp_path / "private.csv", [{"a": 1}])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()}
    assert modes["results.jsonl"] == modes["rejects.jsonl"] == modes["export.parquet"] == 0o644
    assert modes["private.csv"] == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
