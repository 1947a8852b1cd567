"""The thin Ray layer: Ray Data for media and batch inference, Ray Train for stages.

Everything here only wires plain-Python pieces (media, model, training loop, tasks) into
Ray; those pieces run and are tested without Ray.
"""
