"""Evaluation: generation, parsing and the paper's metrics, and the report table."""
