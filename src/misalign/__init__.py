"""misalign-bench: Mis-Align Bench, measuring misalignment across safety, values and culture jointly."""

__version__ = "0.1.0"
