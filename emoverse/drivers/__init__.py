"""What each command runs from top to bottom: a recipe run, its stage chain, an evaluation,
a sweep and the quickstart. Drivers call the Ray layer (`emoverse.distributed`) and the
Ray-free packages; nothing below them calls back up."""
