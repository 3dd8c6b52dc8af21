"""Files: atomic writes and content hashes (files), solver storage and export, the ground-truth
cache, training checkpoints."""
