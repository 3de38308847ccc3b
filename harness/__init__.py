"""Benchmark and verification harness for private inference with TF Encrypted.

Importing ``harness`` does nothing else: no TensorFlow, no compiled ops, no change to
the environment. The layers, each importing only the ones before it:

1. ``harness.net``: worker processes, clusters, the loopback bind() shim, namespaces;
2. ``harness.tfe``: the tf-encrypted boundary; ``harness.tfe.activate()`` checks the
   versions, selects legacy Keras, loads our ops and applies the fixes;
3. ``harness.inference``: models, private prediction, serving, the client;
4. ``harness.results``: metrics, result files, reports, the accuracy gate (no TensorFlow).

``harness.pytest_plugin`` is the pytest side (options, fixtures, result files).
"""

__version__ = "0.1.0"
