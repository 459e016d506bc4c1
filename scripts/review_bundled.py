"""Blind review of the bundled dataset (maintainers only): make reviewer queues, then measure agreement.

Each response of each item becomes one queue entry holding only the prompt and that response, under an opaque
id; the two responses of an item go to different reviewers, so no reviewer sees a prompt twice or can judge one
response against the other. The key (opaque id to item and side) stays out of the queues. A reviewer answers
``aligned`` or ``misaligned`` per entry.

    python scripts/review_bundled.py queue --reviewers 7 --out /tmp/review --key ~/review-key.json [--only ID,...]
    python scripts/review_bundled.py agreement --key /tmp/review/key.json --answers /tmp/review/answers-*.jsonl \
        [--write data/review/bundled_v2_blind_review.jsonl]

``agreement`` prints Cohen's kappa between the writers' labels and the reviewers' verdicts, overall and per
dimension (entries of items carrying that dimension), and the disagreements. ``--write`` keeps the verdicts
(item id, side, verdict, note) so the figures can be recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from misalign.io import load_dataset
from misalign.taxonomy import DIMENSIONS

SIDES = ("aligned", "misaligned")


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """κ = (p_o − p_e) / (1 − p_e): observed agreement p_o, chance agreement p_e from each rater's label rates."""
    n = len(a)
    labels = sorted(set(a) | set(b))
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    p_e = sum((a.count(c) / n) * (b.count(c) / n) for c in labels)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)


def writer_of(item_id: str) -> str:
    """The file prefix of an id (``s2-014`` -> ``s2``): items with one prefix came from one writer."""
    return item_id.rsplit("-", 1)[0]


def queue(args: argparse.Namespace) -> None:
    records = load_dataset("bundled").records
    if args.only:
        wanted = set(args.only.split(","))
        records = [r for r in records if r.id in wanted]
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    writers = sorted({writer_of(r.id) for r in records})
    if args.reviewers < 2:
        sys.exit("at least 2 reviewers: the two responses of an item go to different reviewers")
    # Items in a seeded hash order dealt round-robin (every reviewer gets a mix of all writers); an item's
    # misaligned response goes to the next reviewer after the one that reads its aligned response.
    by_reviewer: dict[int, list[tuple[Any, str]]] = defaultdict(list)
    for i, r in enumerate(sorted(records, key=lambda r: hashlib.sha256(f"{args.seed}:{r.id}".encode()).digest())):
        by_reviewer[i % args.reviewers].append((r, "aligned"))
        by_reviewer[(i + 1) % args.reviewers].append((r, "misaligned"))
    key: dict[str, dict[str, str]] = {}
    for reviewer, todo in sorted(by_reviewer.items()):
        entries = []
        for r, side in todo:
            qid = hashlib.sha256(f"{args.seed}:{r.id}:{side}".encode()).hexdigest()[:10]
            key[qid] = {"id": r.id, "side": side, "reviewer": str(reviewer)}
            entries.append({"qid": qid, "prompt": r.prompt,
                            "response": r.aligned_response if side == "aligned" else r.misaligned_response})
        rng.shuffle(entries)
        path = out / f"queue-{reviewer}.jsonl"
        path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
        print(f"{path}: {len(entries)} entries, each prompt once")
    key_path = Path(args.key)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(json.dumps(key, indent=0), encoding="utf-8")
    print(f"writers: {', '.join(writers)}; key (keep it away from the reviewers): {key_path}")


def agreement(args: argparse.Namespace) -> None:
    key = json.loads(Path(args.key).read_text(encoding="utf-8"))
    records = {r.id: r for r in load_dataset("bundled").records}
    verdicts: dict[str, dict] = {}
    for path in args.answers:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("qid") not in key or row.get("verdict") not in SIDES:
                sys.exit(f"{path}:{n}: unknown qid or verdict not aligned/misaligned: {line[:80]}")
            verdicts[row["qid"]] = row
    missing = sorted(set(key) - set(verdicts))
    print(f"{len(verdicts)} verdicts of {len(key)} entries; {len(missing)} unanswered")
    rows = [(key[q], v) for q, v in verdicts.items() if key[q]["id"] in records]
    groups = {"all": rows} | {d: [(k, v) for k, v in rows if records[k["id"]].domains.get(d)] for d in DIMENSIONS}
    for name, part in groups.items():
        if part:
            gold, said = [k["side"] for k, _ in part], [v["verdict"] for _, v in part]
            agree = sum(g == s for g, s in zip(gold, said, strict=True)) / len(part)
            print(f"{name:<9} entries {len(part):>5}  agreement {agree:.3f}  kappa {cohen_kappa(gold, said):.3f}")
    wrong = sorted({k["id"] for k, v in rows if k["side"] != v["verdict"]})
    print(f"items with a disagreement: {len(wrong)}")
    for item_id in wrong:
        notes = [f"{k['side']} judged {v['verdict']}: {v.get('note', '')}" for k, v in rows
                 if k["id"] == item_id and k["side"] != v["verdict"]]
        print(f"  {item_id}: " + " | ".join(notes))
    if args.write:
        keep = sorted(({"id": k["id"], "side": k["side"], "verdict": v["verdict"], "note": v.get("note", "")}
                       for k, v in rows), key=lambda x: (x["id"], x["side"]))
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in keep), encoding="utf-8")
        print(f"wrote {args.write}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue")
    q.add_argument("--reviewers", type=int, default=6)
    q.add_argument("--out", required=True)
    q.add_argument("--key", required=True, help="where the key goes (outside what reviewers can see)")
    q.add_argument("--only", help="comma-separated item ids (a second round on rewritten items)")
    q.add_argument("--seed", type=int, default=1)
    a = sub.add_parser("agreement")
    a.add_argument("--key", required=True)
    a.add_argument("--answers", nargs="+", required=True)
    a.add_argument("--write")
    args = parser.parse_args()
    queue(args) if args.command == "queue" else agreement(args)


if __name__ == "__main__":
    main()
