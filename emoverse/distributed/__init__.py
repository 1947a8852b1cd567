"""The thin Ray layer: Ray Data for media and batch inference, Ray Train for a stage, Ray Tune
for sweeps, Ray's Jobs API and a local rehearsal cluster.

Everything here only wires plain-Python pieces (media, model, the stage, tasks) into Ray;
those pieces run and are tested without Ray.
"""
