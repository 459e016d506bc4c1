"""Stage II: ask a model whether each response is misaligned and score it (Cov, FFR, AS)."""
