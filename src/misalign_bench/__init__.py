"""inspect_ai registration of Mis-Align Bench: the task ``misalign_bench/misalign_bench``.

inspect names a task by the top-level package that defines it, so the task is defined here (a thin wrapper of
:func:`misalign.interop.inspect_task.build_task`) and found through the ``inspect_ai`` entry point.
"""
