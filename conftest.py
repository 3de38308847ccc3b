"""Project-wide pytest configuration: hypothesis profiles.

The harness's options, fixtures and result files come from its pytest plugin
(``harness.pytest_plugin``, registered by ``pip install``); this file only picks the
hypothesis profile: ``ci`` (bounded, derandomized) when ``CI`` is set, else ``dev``;
``pytest --hypothesis-profile thorough`` for a long run.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
