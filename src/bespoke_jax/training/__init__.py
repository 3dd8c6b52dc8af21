"""Training a family: the loop and its steps."""
