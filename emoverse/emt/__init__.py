"""EMT: the Emotion Multitask instruction set (manifest format, demo set, mixtures)."""
