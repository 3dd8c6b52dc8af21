"""Code that trained and checked the shipped models (not part of the installed package)."""
