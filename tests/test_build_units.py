from collections import Counter
from pathlib import Path

import pytest

from misalign.build.classify import assign, micro_f1, parse_chat_answer
from misalign.build.generate import assign_generators, parse_prompt_list, read_check
from misalign.build.pipeline import BuildConfig
from misalign.records import Domains
from misalign.taxonomy import Taxonomy


def test_assign_uses_delta_and_allows_none():
    probs = {"safety": {"Self-harm": 0.5, "Privacy violation": 0.49}, "value": {"Health": 0.2}, "cultural": {}}
    d = assign(probs)
    assert d.safety == ["Self-harm"] and d.value == [] and d.cultural == []
    assert assign(probs, delta=0.1).value == ["Health"]


def test_chat_answer_is_validated_against_the_taxonomy():
    tax = Taxonomy.default()
    vec = parse_chat_answer('```json\n{"safety": {"self-harm": 0.9}, "value": {"Health": 80}, "cultural": {}}\n```',
                            tax)
    assert vec["safety"]["Self-harm"] == 0.9 and vec["value"]["Health"] == 0.8
    assert len(vec["value"]) == 56 and vec["safety"]["Privacy violation"] == 0.0
    assert parse_chat_answer('{"safety": ["Privacy violation"], "value": [], "cultural": ["None"]}',
                             tax)["safety"]["Privacy violation"] == 1.0
    with pytest.raises(ValueError, match="unknown value domain 'Bravery'"):
        parse_chat_answer('{"safety": {}, "value": {"Bravery": 0.9}, "cultural": {}}', tax)
    with pytest.raises(ValueError, match="no JSON object"):
        parse_chat_answer("I think it is about health.", tax)


def test_micro_f1():
    gold = [Domains(value=["Health"]), Domains(value=["Wealth", "Honesty"]), Domains()]
    pred = [Domains(value=["Health"]), Domains(value=["Wealth"]), Domains(value=["Beauty"])]
    r = micro_f1(gold, pred, "value")
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["support"] == 3


def test_generator_assignment_is_seeded_and_balanced():
    a = assign_generators(101, ["g1", "g2", "g3"], seed=4)
    assert a == assign_generators(101, ["g1", "g2", "g3"], seed=4)
    assert a != assign_generators(101, ["g1", "g2", "g3"], seed=5)
    assert sorted(Counter(a).values()) == [33, 34, 34]


def test_prompt_lists_and_checks_parse():
    assert parse_prompt_list('Here: {"prompts": ["a?", " b? ", ""]}') == ["a?", "b?"]
    assert parse_prompt_list('["x", "y"]') == ["x", "y"]
    assert parse_prompt_list("no json") == []
    ok = read_check('{"verdict": "misaligned", "on_topic": true, "fluent": true, "feedback": ""}', "misaligned")
    assert ok["pass"] and ok["reason"] == ""
    wrong = read_check('{"verdict": "aligned", "on_topic": true, "fluent": true, "feedback": "too mild"}',
                       "misaligned")
    assert not wrong["pass"] and wrong["reason"] == "judged aligned" and wrong["feedback"] == "too mild"
    off = read_check('{"verdict": "aligned", "on_topic": false}', "aligned")
    assert off["reason"] == "off topic"
    assert read_check("???", "aligned")["reason"] == "judge answer unparseable"


def test_build_config_errors_name_file_and_key(tmp_path: Path):
    cfg = tmp_path / "build.toml"
    cfg.write_text('input = "p.csv"\nout = "b"\ntau = 100\n')
    with pytest.raises(ValueError, match=r"build.toml: key 'tau'"):
        BuildConfig.from_file(cfg)
    cfg.write_text('input = "p.csv"\nout = "b"\ntua = 3\n')
    with pytest.raises(ValueError, match=r"key 'tua'"):
        BuildConfig.from_file(cfg)
    yml = tmp_path / "build.yaml"
    yml.write_text("input: p.csv\nout: b\ngenerators: [openai/a, openai/b]\njudge: openai/j\n")
    c = BuildConfig.from_file(yml)
    assert c.input == tmp_path / "p.csv" and c.generators == ["openai/a", "openai/b"]
