"""Stage I: build a paired dataset (classify, expand, deduplicate, respond, reject, split)."""
