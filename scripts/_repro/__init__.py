"""The machinery behind ``scripts/reproduce.py``: one row = one ``run_trial`` call.

Modules:
    core: rows, their keys and fingerprints, the resumable ``results.jsonl``, aggregation over
        seeds, markdown tables and the unit conversions (compression -> sparsity, normalized eps
        -> pixel eps). Pure Python: no torch at import time, so the tests of the bookkeeping are cheap.
    papers: the rows of each seed paper (full and ``--quick`` settings), their references and targets.
    runner: base models (trained once, cached), the test-image trial context, the run loop.
    report: the per-paper markdown file, PNG plots and ``docs/RESULTS.md``.
"""
