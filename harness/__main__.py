"""Command line: ``python -m harness predict|...``."""
from harness.cli import main

raise SystemExit(main())
