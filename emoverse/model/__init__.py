"""Model building: the tiny default, loading any HF image-text-to-text model, trainable parts."""
