"""The M2SE training loop: batches from the model's own processor, loss on answers only."""
