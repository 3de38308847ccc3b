"""``python -m harness.tfe.ops``: build our ops library (cached) and print its path."""
from harness.tfe.ops.build import main

main()
