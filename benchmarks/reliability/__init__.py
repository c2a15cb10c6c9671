"""The reliability sweep's cases and runner (the entry point: benchmarks/reliability_sweep.py).

`runner` holds the framework: the `Case` record and the `cases` table builder, the shared
context `Ctx`, the classification of an outcome, the worker processes and the JSON. `helpers`
holds what several areas' cases share. Each other module is one area: its ``CASES``, built from
rows ``(name, run, ok, mentions[, flags])``, in the order they run.
"""
