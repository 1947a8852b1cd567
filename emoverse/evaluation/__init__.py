"""Evaluation without Ray: scoring with the paper's metrics, validation of a checkpoint in one
process, and the report (metrics, predictions, figures, comparisons)."""
