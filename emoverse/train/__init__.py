"""Training without Ray: one stage as one process runs it (`stage`), the loop every stage
runs (`loop`: loss on answers only), and its engines (torch, DeepSpeed)."""
