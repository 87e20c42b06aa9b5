"""Optimisers: SGD and Adam (to be written)."""
