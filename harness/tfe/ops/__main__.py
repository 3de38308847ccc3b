"""``python -m harness.tfe.ops``: build our ops library (cached) and print its path."""
from harness.tfe.quiet import startup

with startup():
    import tensorflow  # noqa: F401

from harness.tfe.ops.build import main  # noqa: E402

main()
