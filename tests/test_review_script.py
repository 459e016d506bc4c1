"""scripts/review_bundled.py: blind queues (an item's two responses to different reviewers, no label, no key in
the queues) and the agreement figures (Cohen's kappa checked against a hand-worked example)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "review_bundled.py"


def _module():
    spec = importlib.util.spec_from_file_location("review_bundled", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_cohen_kappa_matches_a_hand_worked_example():
    kappa = _module().cohen_kappa
    # p_o = 3/4; p_e = (2/4)(1/4) + (2/4)(3/4) = 1/2; kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2
    assert kappa(["a", "a", "m", "m"], ["a", "m", "m", "m"]) == 0.5
    assert kappa(["a", "m"], ["a", "m"]) == 1.0
    assert kappa(["a", "m", "a", "m"], ["m", "a", "m", "a"]) == -1.0


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_queues_are_blind_and_agreement_counts_disagreements(tmp_path: Path):
    out, key_path = tmp_path / "queues", tmp_path / "private" / "key.json"
    _run("queue", "--reviewers", "3", "--out", str(out), "--key", str(key_path))
    key = json.loads(key_path.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["queue-0.jsonl", "queue-1.jsonl", "queue-2.jsonl"]
    reviewers_of: dict[str, set[str]] = defaultdict(set)
    for path in out.iterdir():
        entries = [json.loads(x) for x in path.read_text().splitlines()]
        assert all(set(e) == {"qid", "prompt", "response"} for e in entries)  # no label, no id
        prompts = [e["prompt"] for e in entries]
        assert len(prompts) == len(set(prompts))  # a reviewer never sees a prompt twice
        for e in entries:
            reviewers_of[key[e["qid"]]["id"]].add(path.stem)
    assert all(len(r) == 2 for r in reviewers_of.values())  # the two sides went to two reviewers
    # answers: all as labelled, except two entries flipped
    qids = sorted(key)
    flipped = set(qids[:2])
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"qid": q, "verdict": ("aligned" if key[q]["side"] == "misaligned"
                                                                   else "misaligned") if q in flipped
                                           else key[q]["side"], "note": ""}) + "\n" for q in qids))
    kept = tmp_path / "verdicts.jsonl"
    report = _run("agreement", "--key", str(key_path), "--answers", str(answers), "--write", str(kept))
    n = len(qids)
    assert f"entries {n:>5}  agreement {(n - 2) / n:.3f}" in report
    assert f"items with a disagreement: {len({key[q]['id'] for q in flipped})}" in report
    assert len(kept.read_text().splitlines()) == n
