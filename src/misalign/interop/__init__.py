"""Bridges to other evaluation tools: an inspect_ai task and an lm-evaluation-harness task folder."""
