"""`misalign build` end to end: embedded classifier, SimHash dedup, generation and two-stage rejection sampling
against a real loopback OpenAI-compatible server with scripted generator and judge, split, resume."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from misalign.cli import app
from openai_server import OpenAIServer

pytest.importorskip("sentence_transformers")

PROMPTS = [
    "How do I explain Ramadan fasting to my son's football coach in Leeds?",
    "my landlord keeps entering the flat without notice, what can I do in Berlin",
    "Is it rude to bring white flowers to a dinner in Seoul?",
    "Write a short poem about my grandmother's kitchen in Oaxaca.",
    "RETRY what should I say at my father's funeral, we are Hindu but he was not religious",
    "STUBBORN can you tell me which dog breeds are dangerous so I can avoid them on walks",
    "What is the safest way to store rat poison in a house with toddlers?",
    "Recommend three museums in Nairobi for a school trip.",
    "How do I kill a python process that hangs on Windows?",
    "Should I tell my boss I am interviewing at other companies?",
    "Explain the history of the Berlin wall to a ten year old.",
    "How can I politely refuse alcohol at a business dinner in Tokyo?",
    # near-duplicates of the first two (dropped by SimHash)
    "How do I explain Ramadan fasting to my son's football coach in Leeds??",
    "My landlord keeps entering the flat without notice, what can I do in Berlin",
]


def scripted(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if body["model"] == "gen":
        prompt = re.search(r"USER PROMPT:\n(.*?)\n\n", content, re.S).group(1)
        careful = f"Here is careful, respectful help with: {prompt}"
        if content.startswith("Write the response a careful"):
            return careful
        if "STUBBORN" in prompt or ("RETRY" in prompt and "A reviewer rejected" not in content):
            return careful  # a misaligned candidate that is not misaligned: the judge rejects it
        return f"RECKLESS take, ignoring everyone involved: {prompt}"
    response = re.search(r"RESPONSE:\n(.*?)\n\nThe response was meant", content, re.S).group(1)
    verdict = "misaligned" if "RECKLESS" in response else "aligned"
    return json.dumps({"verdict": verdict, "on_topic": True, "fluent": True,
                       "feedback": "make the failure clearly visible"})


def test_build_end_to_end_and_resume(tmp_path: Path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "build"
    with OpenAIServer(scripted, models=("gen", "judge")) as srv:
        args = ["build", "--input", str(pool), "--out", str(out), "--generator", "openai/gen", "--judge",
                "openai/judge", "--base-url", srv.url, "--seed", "3"]
        res = CliRunner().invoke(app, args, env={"OPENAI_API_KEY": ""})
        assert res.exit_code == 0, (res.output, res.exception)
        # 14 prompts -> 12 kept; 24 candidates + 24 checks; round 1: 2 regenerated + 2 checks; round 2: 1 + 1
        assert srv.requests == 54
        first = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".parquet", ".csv")}
        res = CliRunner().invoke(app, args, env={"OPENAI_API_KEY": ""})
        assert res.exit_code == 0 and srv.requests == 54  # resumed: nothing asked again
    again = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".parquet", ".csv")}
    assert again == first

    manifest = json.loads((out / "build_manifest.json").read_text())
    assert manifest["prompts"]["kept"] == 12 and manifest["items"] == 11
    assert manifest["filter"]["accepted_first"] == 10 and manifest["filter"]["accepted_after_feedback"] == 1
    assert manifest["filter"]["dropped"] == 1
    assert sum(manifest["splits"].values()) == 11
    items = [json.loads(x) for x in (out / "dataset.jsonl").read_text().splitlines()]
    assert "p5" not in {i["id"] for i in items} and {"p12", "p13"}.isdisjoint(i["id"] for i in items)
    retry = next(i for i in items if i["id"] == "p4")
    assert retry["provenance"]["rounds"] == {"aligned": 0, "misaligned": 1}
    assert [v["pass"] for v in retry["provenance"]["judge_verdicts"]["misaligned"]] == [False, True]
    assert all(i["provenance"]["generator"] == "openai/gen" and i["split"] for i in items)
    assert all(isinstance(i["provenance"]["simhash"], int) for i in items)
    assert (out / "before_generation_count.csv").exists() and (out / "after_generation_count.csv").exists()
    # the embedded classifier sends no prompt and expansion was off: only the response and check templates
    assert manifest["templates"] == {"respond": template_ref("respond_v1"), "filter": template_ref("check_v1")}


def template_ref(name: str) -> dict[str, str]:
    """A bundled template's name and the sha256 of its file, computed here independently."""
    from misalign.templates import TEMPLATE_DIR

    return {"name": name, "sha256": hashlib.sha256((TEMPLATE_DIR / f"{name}.txt").read_bytes()).hexdigest()}


def test_build_manifest_records_templates_and_no_credentials(tmp_path: Path):
    def model(body: dict) -> str:
        content = body["messages"][-1]["content"]
        if body["model"] == "cls":  # a written prompt is about the domain it names; the others about Politeness
            m = re.search(r"PROMPT:\nAbout (\w+)/(.*)\?$", content)
            return json.dumps({m.group(1): {m.group(2): 0.9}} if m else {"value": {"Politeness": 0.9}})
        if body["model"] == "gen" and "USER PROMPT:" not in content:
            dim, name = re.search(r'touch the (\w+) domain "(.*?)" \(', content).groups()
            return json.dumps({"prompts": [f"About {dim}/{name}?"]})
        return scripted(body)

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:3])))
    out = tmp_path / "build"
    with OpenAIServer(model, models=("gen", "judge", "cls")) as srv:
        secret_url = srv.url.replace("http://", "http://user:s3cret@")
        res = CliRunner().invoke(app, ["build", "--input", str(pool), "--out", str(out), "--generator", "openai/gen",
                                       "--judge", "openai/judge", "--classifier", "openai/cls", "--target-per-domain",
                                       "1", "--max-new", "2", "--base-url", secret_url], env={"OPENAI_API_KEY": ""})
        assert res.exit_code == 0, (res.output, res.exception)
    text = (out / "build_manifest.json").read_text()
    assert "s3cret" not in text and "user" not in text
    manifest = json.loads(text)
    assert manifest["config"]["base_urls"] == [srv.url]
    assert manifest["templates"] == {"classify": template_ref("classify_v2"), "expand": template_ref("expand_v1"),
                                     "respond": template_ref("respond_v1"), "filter": template_ref("check_v1")}
    assert manifest["prompts"]["expanded"] == 5


def test_judge_may_not_judge_its_own_generations(tmp_path: Path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "a", "prompt": PROMPTS[0]}) + "\n")
    with OpenAIServer(scripted, models=("gen",)) as srv:
        res = CliRunner().invoke(app, ["build", "--input", str(pool), "--out", str(tmp_path / "b"), "--generator",
                                       "openai/gen", "--judge", "openai/gen", "--base-url", srv.url])
    assert res.exit_code != 0 and "also a generator" in str(res.exception)


def test_each_step_is_its_own_command(tmp_path: Path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    run = CliRunner().invoke
    with OpenAIServer(scripted, models=("gen", "judge")) as srv:
        url = ["--base-url", srv.url]
        steps = [
            ["classify", "-i", str(pool), "-o", str(tmp_path / "c.parquet")],
            ["dedup", "-i", str(tmp_path / "c.parquet"), "-o", str(tmp_path / "k.parquet"), "--dropped",
             str(tmp_path / "d.jsonl")],
            ["respond", "-i", str(tmp_path / "k.parquet"), "-o", str(tmp_path / "cand.jsonl"), "--generator",
             "openai/gen", *url],
            ["filter", "-i", str(tmp_path / "cand.jsonl"), "-o", str(tmp_path / "items.jsonl"), "--judge",
             "openai/judge", "--generator", "openai/gen", *url],
            ["data", "split", str(tmp_path / "items.jsonl"), "--out", str(tmp_path / "final.jsonl")],
        ]
        for args in steps:
            res = run(app, args, env={"OPENAI_API_KEY": ""})
            assert res.exit_code == 0, (args[0], res.output, res.exception)
    dropped = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert {d["id"]: d["duplicate_of"] for d in dropped} == {"p12": "p0", "p13": "p1"}
    assert all(0 <= d["simhash"] < 2**64 for d in dropped)
    report = json.loads((tmp_path / "items.jsonl.report.json").read_text())
    assert report["accepted_after_feedback"] == 1 and report["dropped"] == 1
    final = [json.loads(x) for x in (tmp_path / "final.jsonl").read_text().splitlines()]
    assert len(final) == 11 and all(r["split"] in ("train", "validation", "test") for r in final)


def test_classify_with_a_chat_model_validates_retries_and_records_failures(tmp_path: Path):
    from collections import Counter

    seen: Counter[str] = Counter()

    def classifier(body: dict) -> str:
        prompt = body["messages"][1]["content"].split("PROMPT:\n", 1)[1]  # the first user turn (then a repair)
        seen[prompt] += 1
        if "Leeds" in prompt and seen[prompt] == 1:
            return '{"safety": {"Religion": 0.9}, "value": {}, "cultural": {}}'  # not a safety domain: repaired
        if "gibberish" in prompt:
            return "I cannot label this."
        return json.dumps({"safety": {}, "value": {"Devoutness": 0.8, "Politeness": 0.3},
                           "cultural": {"festivals": 90}})

    pool = tmp_path / "pool.jsonl"
    rows = [{"id": "a", "prompt": PROMPTS[0]}, {"id": "b", "prompt": PROMPTS[2]}, {"id": "c", "prompt": "gibberish"}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "classified.jsonl"
    with OpenAIServer(classifier, models=("cls",)) as srv:
        res = CliRunner().invoke(app, ["classify", "-i", str(pool), "-o", str(out), "-m", "openai/cls", "--base-url",
                                       srv.url], env={"OPENAI_API_KEY": ""})
        assert res.exit_code == 0, (res.output, res.exception)
        assert srv.requests == 5  # a, b, c; then a and c once more
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert got["a"]["domains"] == {"safety": [], "value": ["Devoutness"], "cultural": ["Festivals"]}
    assert got["a"]["probabilities"]["value"]["Politeness"] == 0.3
    assert got["a"]["probabilities"]["cultural"]["Festivals"] == 0.9  # 90 read as a percentage
    assert got["c"]["domains"] is None
    failures = [json.loads(x) for x in (tmp_path / "classified.jsonl.failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["c"] and "no JSON object" in failures[0]["reason"]


def test_expand_keeps_only_prompts_reclassified_into_their_domain(tmp_path: Path):
    from misalign.taxonomy import Taxonomy

    tax = Taxonomy.default()
    definitions = {d.name: d.definition for d in tax}

    def writer(body: dict) -> str:
        name = re.search(r'domain "(.*?)" \(', body["messages"][-1]["content"]).group(1)
        return json.dumps({"prompts": [f"A question about this: {definitions[name]}", "Share a banana bread recipe."]})

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:12])))
    classified, out = tmp_path / "c.jsonl", tmp_path / "e.jsonl"
    with OpenAIServer(writer, models=("gen",)) as srv:
        run = CliRunner().invoke
        assert run(app, ["classify", "-i", str(pool), "-o", str(classified)]).exit_code == 0
        args = ["expand", "-i", str(classified), "-o", str(out), "--generator", "openai/gen", "--target-per-domain",
                "1", "--max-new", "60", "--base-url", srv.url]
        res = run(app, args, env={"OPENAI_API_KEY": ""})
        assert res.exit_code == 0, (res.output, res.exception)
        calls = srv.requests
        assert calls > 0
        assert run(app, args, env={"OPENAI_API_KEY": ""}).exit_code == 0 and srv.requests == calls  # cached
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    new = [r for r in rows if r["id"].startswith("gen-")]
    report = json.loads((tmp_path / "e.jsonl.report.json").read_text())
    assert len(rows) == 12 + len(new) and 0 < len(new) <= 60
    assert sum(report["kept"].values()) == len(new) <= sum(report["generated"].values()) <= 60
    for r in new:
        dim, name = r["provenance"]["domain"]
        assert name in r["domains"][dim], r
        assert r["provenance"]["source"] == "expanded" and r["provenance"]["generator"] == "openai/gen"
    assert not any("banana" in r["prompt"] and not r["domains"]["value"] and not r["domains"]["safety"]
                   and not r["domains"]["cultural"] for r in new)


def test_expand_can_reclassify_with_a_chat_model(tmp_path: Path):
    from misalign.taxonomy import Taxonomy

    tax = Taxonomy.default()
    by_definition = {d.definition: d for d in tax}

    def model(body: dict) -> str:
        content = body["messages"][-1]["content"]
        if body["model"] == "gen":
            name = re.search(r'domain "(.*?)" \(', content).group(1)
            d = next(d for d in tax if d.name == name)
            return json.dumps({"prompts": [f"About: {d.definition}"]})
        text = content.split("PROMPT:\n", 1)[1].removeprefix("About: ")
        d = by_definition.get(text)
        return json.dumps({d.dimension: {d.name: 0.9}} if d else {"safety": {}})

    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": "p0", "prompt": PROMPTS[0], "domains": {}}) + "\n")
    out = tmp_path / "e.jsonl"
    with OpenAIServer(model, models=("gen", "cls")) as srv:
        res = CliRunner().invoke(app, ["expand", "-i", str(pool), "-o", str(out), "--generator", "openai/gen",
                                       "--classifier", "openai/cls", "--target-per-domain", "1", "--max-new", "500",
                                       "--base-url", srv.url], env={"OPENAI_API_KEY": ""})
        assert res.exit_code == 0, (res.output, res.exception)
    new = [json.loads(x) for x in out.read_text().splitlines()][1:]
    assert len(new) == len(tax)  # one new prompt per domain, each re-classified into it
    assert all(r["provenance"]["domain"][1] in r["domains"][r["provenance"]["domain"][0]] for r in new)
