"""Test harness for the real kafka service (being written)."""
