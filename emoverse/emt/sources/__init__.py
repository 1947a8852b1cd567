"""Converters from the public corpora to EMT manifest rows, one module per corpus.

Each converter returns a `Conversion`: the rows it made and a rejection per input row it
could not use (row, field, reason). Nothing is dropped silently.
"""
