"""Re-assign the bundled dataset's splits after items are added or changed (maintainers only).

The split of every item comes from ``assign_splits(all items in file order, seed=0)``: seeded, stratified by
each item's rarest domain, 80/10/10. This rewrites the ``split`` field in place and leaves every other field
and the line order as written. ``tests/test_bundled.py`` checks the stored splits equal this assignment.
"""

from __future__ import annotations

import json

from misalign.build.split import assign_splits
from misalign.io import bundled_files, load_dataset

KEYS = ("id", "prompt", "aligned_response", "misaligned_response", "domains", "semantic_type", "split")


def main() -> None:
    records = load_dataset("bundled").records
    split_of = {r.id: s for r, s in zip(records, assign_splits(records, seed=0), strict=True)}
    for path in bundled_files():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row in rows:
            row["split"] = split_of[row["id"]]
        text = "".join(json.dumps({k: row[k] for k in KEYS if k in row}, ensure_ascii=False) + "\n" for row in rows)
        path.write_text(text, encoding="utf-8")
        print(f"{path.name}: {len(rows)} items")


if __name__ == "__main__":
    main()
