"""Ground truth: the adaptive solve, Hermite paths, training data and the sharded solve."""
