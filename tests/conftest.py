"""These tests run tf-encrypted: activate the boundary before any test module imports
TensorFlow (``harness.tfe.activate``; options and fixtures come from the plugin)."""
from harness.tfe import activate

activate()
