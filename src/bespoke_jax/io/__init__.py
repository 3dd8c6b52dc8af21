"""Files: solver storage and export, the ground-truth cache, training checkpoints."""
