"""Evaluation scoring: per-item metrics, run summaries and paired comparisons of two runs.

A lower-level package like `indexer`: pure functions over plain values, no `service` imports.
"""
