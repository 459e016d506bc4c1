"""The task inspect finds through the ``inspect_ai`` entry point (``misalign_bench = "misalign_bench._registry"``)."""

from __future__ import annotations

from inspect_ai import Task, task

from misalign.bench.runner import EvalConfig, UnparseablePolicy
from misalign.interop.inspect_task import build_task


@task
def misalign_bench(split: str = "test", dataset: str = "bundled", template: str = EvalConfig.template,
                   runs: int = EvalConfig.runs, seed: int = EvalConfig.seed,
                   unparseable: UnparseablePolicy = EvalConfig.unparseable,
                   logprobs: bool = EvalConfig.logprobs) -> Task:
    """Mis-Align Bench: judge each response of ``dataset``'s ``split`` (``bundled``, or any file
    ``misalign eval --dataset`` reads) as ``misalign eval`` does; ``runs`` = epochs (seeds seed..seed+runs-1),
    ``template`` a bundled judge template or a file, ``unparseable`` answers count as aligned, misaligned or are
    excluded. Metrics: Coverage, False Failure Rate and Alignment Score, overall, per dimension and on all-three
    items."""
    return build_task(split=split, dataset=dataset, template=template, runs=runs, seed=seed, unparseable=unparseable,
                      logprobs=logprobs)
