"""Plaintext Keras models used by the private-inference benchmarks."""
