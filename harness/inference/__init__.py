"""inference layer (see harness/__init__.py)."""
