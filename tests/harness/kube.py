"""Test harness for the real kube service (being written)."""
