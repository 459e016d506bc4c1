"""The chat classifier against the loopback OpenAI server: the compact ``classify_v2`` prompt, one repair message
naming what was wrong with an invalid answer (none after a failed call), and the call cache across repairs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from misalign.build.classify import (
    REPAIR_ERROR_CHARS,
    SHORT_WORDS,
    ChatClassifier,
    Classification,
    chat_messages,
    short_definition,
)
from misalign.build.session import run_with_models
from misalign.models import Endpoint, ModelPool
from misalign.records import Prompt
from misalign.taxonomy import DIMENSIONS, Taxonomy
from openai_server import OpenAIServer

TAX = Taxonomy.default()
SEOUL = Prompt(id="seoul", prompt="Is it rude to bring white flowers to a dinner in Seoul?")
LEEDS = Prompt(id="leeds", prompt="How do I explain Ramadan fasting to my son's football coach in Leeds?")
VALID = json.dumps({"safety": {}, "value": {"Politeness": 0.9}, "cultural": {"Festivals": 0.2}})
WRONG_DOMAIN = '{"safety": {"Religion": 0.9}, "value": {}, "cultural": {}}'  # Religion is no safety domain


def classify(srv: OpenAIServer, prompts: list[Prompt], *, cache: Path | None = None, template: str | None = None,
             on_result: Any = None) -> Classification:
    """Classify ``prompts`` with ``openai/cls`` on ``srv`` (optionally through a call cache file)."""
    pool = ModelPool(Endpoint(base_urls=[srv.url], api_key_env="none"))

    async def step(cc: Any) -> Classification:
        kwargs = {"template": template} if template else {}
        classifier = ChatClassifier(pool.get("openai/cls"), TAX, **kwargs)
        return await classifier.classify(prompts, cache=cc, on_result=on_result)

    return run_with_models(step, pool=pool, cache_path=cache)


def repaired_once(body: dict[str, Any]) -> str:
    """A model that names a wrong domain first and answers validly once it is told what was wrong."""
    return WRONG_DOMAIN if len(body["messages"]) == 2 else VALID


def chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_an_invalid_answer_gets_one_repair_message_naming_the_error(tmp_path: Path):
    with OpenAIServer(repaired_once, models=("cls",)) as srv:
        result = classify(srv, [SEOUL], cache=tmp_path / "calls.sqlite")
        assert srv.requests == 2
        first, second = srv.bodies
        again = classify(srv, [SEOUL], cache=tmp_path / "calls.sqlite")
        assert srv.requests == 2  # both the first request and the repair were cached, each under its own key
    assert result.failures == [] and again.failures == []
    assert result.prompts[0].domains.value == ["Politeness"] and again.prompts == result.prompts
    assert second["messages"][:2] == first["messages"] == chat_messages(SEOUL.prompt, TAX)
    assert second["messages"][2] == {"role": "assistant", "content": WRONG_DOMAIN}
    repair = second["messages"][3]
    assert repair["role"] == "user" and len(second["messages"]) == 4
    assert "unknown safety domain 'Religion'" in repair["content"]
    assert "only the JSON object" in repair["content"] and len(repair["content"]) < 400
    assert second["temperature"] == first["temperature"] == 0.0


def test_an_answer_still_invalid_after_the_repair_is_one_failure_with_its_reason():
    with OpenAIServer(lambda body: "I cannot label this.", models=("cls",)) as srv:
        result = classify(srv, [SEOUL])
        assert srv.requests == 2
    assert result.prompts[0].domains is None
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure["id"] == "seoul" and failure["raw"] == "I cannot label this."
    assert failure["reason"] == "no JSON object with safety/value/cultural keys (after a repair message)"
    assert "no JSON object" in srv.bodies[1]["messages"][-1]["content"]


def test_a_failed_call_is_not_repaired():
    with OpenAIServer(lambda body: VALID, models=("cls",)) as srv:
        srv.faults = ["400"]
        result = classify(srv, [SEOUL])
        assert srv.requests == 1  # a 400 is the server's answer to the request, not an answer to repair
    assert result.prompts[0].domains is None
    assert [f["id"] for f in result.failures] == ["seoul"]
    assert result.failures[0]["reason"].startswith("call failed: HTTP 400")


def test_results_are_reported_by_prompt_index_including_repairs():
    def model(body: dict[str, Any]) -> str:
        return repaired_once(body) if "Seoul" in body["messages"][1]["content"] else VALID

    seen: Counter[int] = Counter()
    with OpenAIServer(model, models=("cls",)) as srv:
        result = classify(srv, [LEEDS, SEOUL], on_result=lambda i, c: seen.update([i]))
        assert srv.requests == 3
    assert result.failures == [] and seen == {0: 1, 1: 2}


def test_classify_v1_stays_loadable_and_borrows_the_repair_message():
    with OpenAIServer(repaired_once, models=("cls",)) as srv:
        result = classify(srv, [SEOUL], template="classify_v1")
        assert srv.requests == 2
    assert result.failures == [] and result.prompts[0].domains.value == ["Politeness"]
    first, second = srv.bodies
    assert first["messages"] == chat_messages(SEOUL.prompt, TAX, "classify_v1")
    assert "unknown safety domain 'Religion'" in second["messages"][3]["content"]


def test_the_repair_message_quotes_a_long_error_cut_short():
    classifier = ChatClassifier(ModelPool(Endpoint(api_key_env="none")).get("openai/cls"), TAX)
    asked = chat_messages(SEOUL.prompt, TAX)
    messages = classifier.repair_messages(asked, "bad", "x" * 5000)
    assert messages[:-1] == [*asked, {"role": "assistant", "content": "bad"}]
    assert "x" * (REPAIR_ERROR_CHARS - 3) + "..." in messages[-1]["content"]
    assert "x" * (REPAIR_ERROR_CHARS - 2) not in messages[-1]["content"]


# -- the compact prompt ------------------------------------------------------------------------------------

def test_the_v2_prompt_is_compact_and_names_every_domain_exactly():
    v1, v2 = chat_messages(SEOUL.prompt, TAX, "classify_v1"), chat_messages(SEOUL.prompt, TAX)
    assert chars(v2) < 0.5 * chars(v1)  # measured: 7,362 against 19,332 characters
    assert words(v2) < 0.5 * words(v1)  # x 1.3: ~1,350 against ~3,330 tokens (SmolLM2's: 1,598 and 3,943)
    assert v2[1] == v1[1]  # the question and the answer format are unchanged
    listed: dict[str, list[str]] = {}
    dim = ""
    for line in v2[0]["content"].splitlines():
        if line.startswith("## "):
            dim = line.removeprefix("## ")
        elif line.startswith("- "):
            name, short = line.removeprefix("- ").split(": ", 1)
            listed.setdefault(dim, []).append(name)
            assert 0 < len(short.split()) <= SHORT_WORDS
    assert listed == {d: TAX.names(d) for d in DIMENSIONS}


def test_short_definitions_are_first_clauses_of_at_most_twelve_words():
    assert short_definition("Harm to minors: physical or emotional abuse, neglect.") == "Harm to minors"
    assert short_definition("Courtesy and good manners. Misalignment is rude.") == "Courtesy and good manners"
    assert short_definition("Seas, coral reefs, coasts, fisheries, marine life and the cultural practices of coastal "
                            "and fishing communities.") == "Seas, coral reefs, coasts, fisheries"
    assert short_definition("one two three four five six seven eight nine ten eleven of twelve") == (
        "one two three four five six seven eight nine ten eleven")
    assert short_definition("Photography") == "Photography"
    for d in TAX:
        short = short_definition(d.definition)
        assert d.definition.startswith(short) and 0 < len(short.split()) <= SHORT_WORDS, d.name


def test_a_failed_repair_call_keeps_the_answer_it_was_repairing():
    with OpenAIServer(lambda body: WRONG_DOMAIN, models=("cls",)) as srv:
        srv.faults = ["none", "400"]  # the first call answers (no such fault); the repair call is refused
        result = classify(srv, [SEOUL])
        assert srv.requests == 2
    [failure] = result.failures
    assert failure["reason"].startswith("call failed: HTTP 400")
    assert failure["reason"].endswith("(after a repair message)")
    assert failure["raw"] == WRONG_DOMAIN
