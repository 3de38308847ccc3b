"""net layer (see harness/__init__.py)."""
