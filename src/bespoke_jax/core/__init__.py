"""Maths with no I/O: schedulers, transforms, model-output conversions, metrics, args, checks."""
