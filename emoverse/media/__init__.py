"""Media: decode clips, sample frames, find and crop faces. Plain Python, no Ray."""
