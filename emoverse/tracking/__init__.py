"""Experiment tracking in MLflow (the `tracking` extra). No Ray.

A recipe run is one MLflow run with a nested run per stage (`emoverse.tracking.runs`); the
process of rank 0 logs each stage's step metrics into the stage's run (`StepLog`). Every
MLflow call goes through a `Sender`: one background thread, so a slow or unreachable server
never holds up training; an outage is logged and the run directory stays the record.
"""

from emoverse.tracking.sender import Sender, StepLog, StepTracking, TrackingUnreachable

__all__ = ["Sender", "StepLog", "StepTracking", "TrackingUnreachable"]
