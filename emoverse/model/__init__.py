"""Models without Ray: loading any HF image-text-to-text model (adapters merged), trainable
parts, stage checkpoints and export, the tiny defaults, model inputs through the model's own
processor (`inputs`), and greedy generation (`generation`)."""
