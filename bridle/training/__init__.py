"""Training: media files -> servable checkpoints (see README)."""
