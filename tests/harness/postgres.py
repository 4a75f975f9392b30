"""Test harness for the real postgres service (being written)."""
