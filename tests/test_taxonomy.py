import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from misalign.cli import app
from misalign.taxonomy import DATA_DIR, DIMENSIONS, Taxonomy, TaxonomyError


def test_default_counts_and_ids():
    tax = Taxonomy.default()
    assert tax.counts() == {"safety": 14, "value": 56, "cultural": 41}
    assert len(tax) == 111
    ids = [d.id for d in tax]
    assert len(set(ids)) == len(ids)
    for d in tax:
        assert d.definition.strip() and len(d.definition.split()) >= 8, d.name
        assert d.source


def test_resolve_is_case_insensitive_and_accepts_ids():
    tax = Taxonomy.default()
    assert tax.resolve("value", "honoring PARENTS & elders").name == "Honoring parents & elders"
    assert tax.resolve("safety", "privacy_violation").name == "Privacy violation"
    assert tax.resolve("cultural", " tv ").name == "TV"
    assert tax.resolve("cultural", "Health") is None  # a value, not a cultural domain


def test_names_match_paper_labels(paper_csv: Path):
    tax = Taxonomy.default()
    with paper_csv.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for dim in DIMENSIONS:
        labels = {r[dim] for r in rows} - {"None", "Unknown", ""}
        names = set(tax.names(dim))
        assert labels <= names, f"{dim}: {sorted(labels - names)} not in taxonomy"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = 'dimension = "cultural"\nsource = "x"\n[[domains]]\nid = "a"\nname = "A"\ndefinition = "Something."\n'


def test_user_taxonomy_and_a_42nd_cultural_domain(tmp_path: Path):
    text = (DATA_DIR / "cultural.toml").read_text(encoding="utf-8")
    text += '\n[[domains]]\nid = "podcasts"\nname = "Podcasts"\ndefinition = "Spoken-word audio series."\n'
    folder = tmp_path / "tax"
    folder.mkdir()
    for dim in ("safety", "value"):
        (folder / f"{dim}.toml").write_text((DATA_DIR / f"{dim}.toml").read_text("utf-8"), "utf-8")
    _write(folder, "cultural.toml", text)
    tax = Taxonomy.load([folder])
    assert tax.counts()["cultural"] == 42
    assert tax.resolve("cultural", "podcasts").name == "Podcasts"
    assert tax.version != Taxonomy.default().version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("cultural", "religion", 1), "unknown dimension 'religion'"),
        (GOOD + '[[domains]]\nid = "a"\nname = "B"\ndefinition = "Other."\n', "duplicate domain id 'a'"),
        (GOOD.replace('"Something."', '"  "'), "empty or missing 'definition'"),
        (GOOD.replace('id = "a"', 'id = "Bad Id"'), "snake_case"),
        ("dimension = [", "not valid TOML"),
    ],
)
def test_validation_errors_name_the_file(tmp_path: Path, text: str, message: str):
    path = _write(tmp_path, "custom.toml", text)
    with pytest.raises(TaxonomyError, match=message) as info:
        Taxonomy.load([path])
    assert "custom.toml" in str(info.value)


def test_cli_json_lists_all_domains():
    result = CliRunner().invoke(app, ["taxonomy", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 111
    assert {"dimension", "id", "name", "definition"} <= set(rows[0])
    assert sum(r["dimension"] == "value" for r in rows) == 56


def test_cli_table_shows_names():
    result = CliRunner().invoke(app, ["taxonomy", "--dimension", "safety"])
    assert result.exit_code == 0
    assert "Animal abuse" in result.stdout and "Honesty" not in result.stdout
