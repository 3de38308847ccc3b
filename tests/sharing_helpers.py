"""Helpers for ``test_sharing.py``: raw shares, ring encodings and exact references.

How tf-encrypted 0.9.1 represents a private value (read from the installed sources):

* Encoding (``Pond._encode``/``ABY3._encode`` + ``native.Factory._encode``): the value is
  cast to float64, multiplied by ``scaling_factor = base**fractional`` and cast to int64.
  ``tf.cast`` (and numpy's ``astype``) **truncate toward zero**; there is no rounding.
  So ``enc(x) = trunc(float64(x) * s)`` and ``dec(X) = X / s``: for |x| < max_abs the
  decoding error ``x - dec(enc(x))`` has the sign of x and magnitude < 1 resolution
  (not resolution/2, which would need round-to-nearest).
* Ring: int64 tensors, all arithmetic wraps mod 2**64 (numpy int64/uint64 arithmetic
  wraps the same way, which is what the references below rely on).
* Pond / SecureNN: two additive shares, ``PondPrivateTensor.unwrapped == (share0, share1)``
  on server0 / server1, ``share0 + share1 = enc(x) mod 2**64``.
* ABY3: replicated 2-of-3 sharing ``enc(x) = x0 + x1 + x2``; server i holds
  ``unwrapped[i] == [x_i, x_{i+1}]``.

Run as a script (``python tests/sharing_helpers.py cluster``) it executes the cluster
property checks in a fresh process and prints JSON: connecting the driver to a remote
cluster changes TensorFlow's global eager context for the rest of the process.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

if __name__ == "__main__":  # script mode: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.tfe import activate; activate()
import harness.inference.private as hp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_encrypted as tfe  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from tf_encrypted.protocol import protocol as _tfe_protocol  # noqa: E402

PROTOCOL_NAMES = ("pond", "securenn", "aby3")
RING_MODULUS = 2**64
FLOAT_EPS = float(np.finfo(np.float64).eps)

# Pond.relu (pond.py:1281-1308): "A Chebyshev polynomial approximation of the ReLU
# function", coefficients of x**k for k = 0..8 (odd k > 1 are absent: zero).
POND_RELU_COEFFS = {
    0: 0.44015372000819103,
    1: 0.500000000,
    2: 0.11217537671414643,
    4: -0.0013660836712429923,
    6: 9.009136367360004e-06,
    8: -2.1097433984e-08,
}


# ----------------------------------------------------------------------------------
# Protocol instances under test
# ----------------------------------------------------------------------------------
@dataclass
class Subject:
    """One protocol instance with the config it was built under."""

    name: str
    config: Any
    prot: Any
    fp: hp.FixedPoint

    @property
    def scale(self) -> int:
        return int(self.prot.fixedpoint_config.scaling_factor)

    @property
    def replicated(self) -> bool:
        return self.name == "aby3"

    def activate(self) -> None:
        """Make this protocol tf-encrypted's global one, with an empty memo cache.

        ``tfe.set_config`` resets the protocol, so config first. tf-encrypted memoizes
        every protocol op in a global dict (``protocol.nodes``) that is never emptied
        and keyed without the protocol or the graph: clearing it per example bounds
        memory and keeps results of one example/graph from leaking into another.
        """
        tfe.set_config(self.config)
        tfe.set_protocol(self.prot)
        _tfe_protocol.nodes.clear()


def layout(name: str) -> Subject:
    """A protocol-less Subject, for helpers that only need the share layout."""
    return Subject(name, None, None, None)  # type: ignore[arg-type]


def build_subject(name: str, config: Any | None = None) -> Subject:
    config = config if config is not None else tfe.LocalConfig(list(hp.PLAYERS))
    tfe.set_config(config)
    prot = hp.PROTOCOLS[name]()
    tfe.set_protocol(prot)
    return Subject(name, config, prot, hp.FixedPoint.of(prot))


# ----------------------------------------------------------------------------------
# Ring arithmetic and encoding references
# ----------------------------------------------------------------------------------
def encode(x: Any, scale: int) -> np.ndarray:
    """tf-encrypted's fixed-point encoding: trunc(float64(x) * scale) as int64."""
    return np.trunc(np.asarray(x, dtype=np.float64) * float(scale)).astype(np.int64)


def ring_sum(*parts: np.ndarray) -> np.ndarray:
    """Sum of int64 arrays mod 2**64 (uint64 wraparound), as int64."""
    total = np.zeros(np.shape(parts[0]), dtype=np.uint64)
    for p in parts:
        total = total + np.asarray(p, dtype=np.int64).view(np.uint64)
    return total.view(np.int64)


def as_u64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).view(np.uint64)


def share_input(subject: Subject, x: np.ndarray, player: str = hp.CLIENT) -> Any:
    """Secret-share ``x`` from ``player`` (eager), as PrivateModel does with images."""
    value = tf.constant(x)
    return subject.prot.define_private_input(player, lambda: value)


def share_variable(subject: Subject, x: np.ndarray) -> Any:
    return subject.prot.define_private_variable(np.asarray(x))


def raw_shares(subject: Subject, x: Any) -> np.ndarray:
    """The backing int64 share tensors, read directly (no reveal).

    Pond/SecureNN: shape (2, *x.shape) = (share0, share1).
    ABY3: shape (3, 2, *x.shape), ``[i][j]`` = j-th share held by server i.
    """
    if subject.replicated:
        return np.array([[np.asarray(s.value) for s in pair] for pair in x.unwrapped])
    return np.array([np.asarray(s.value) for s in x.unwrapped])


def raw_share_tensors(subject: Subject, x: Any) -> list:
    """Like ``raw_shares`` but tf tensors: for returning from a ``tf.function``."""
    if subject.replicated:
        return [[s.value for s in pair] for pair in x.unwrapped]
    return [s.value for s in x.unwrapped]


def reconstruct_raw(subject: Subject, shares: np.ndarray) -> np.ndarray:
    """enc(x) from raw shares, summed mod 2**64 in numpy."""
    if subject.replicated:
        return ring_sum(shares[0][0], shares[1][0], shares[2][0])
    return ring_sum(shares[0], shares[1])


def replication_mismatches(shares: np.ndarray) -> list[str]:
    """ABY3 consistency: server i's second share is server i+1's first share."""
    bad = []
    for i in range(3):
        if not np.array_equal(shares[i][1], shares[(i + 1) % 3][0]):
            bad.append(f"server{i}[1] != server{(i + 1) % 3}[0]")
    return bad


def revealed_ring(x: Any) -> list[np.ndarray]:
    """The ring values each server reconstructs with tf-encrypted's own ``reveal``."""
    return [np.asarray(v.value) for v in x.reveal().unwrapped]


def revealed_decoded(x: Any) -> np.ndarray:
    return np.asarray(x.reveal().to_native(), dtype=np.float64)


def output_to_client(subject: Subject, x: Any) -> np.ndarray:
    """Decode on the prediction client only (``define_output``, the harness's path)."""
    got: list = []
    subject.prot.define_output(hp.CLIENT, [x], lambda plain: got.append(plain))
    return np.asarray(got[0], dtype=np.float64)


def floor_div(p: np.ndarray, scale: int) -> np.ndarray:
    return np.floor_divide(np.asarray(p, dtype=np.int64), np.int64(scale))


def truncation_violations(out: np.ndarray, exact: np.ndarray, scale: int) -> np.ndarray:
    """Mask of elements where ``out`` is not a valid truncation of ``exact`` by ``scale``.

    Both protocols' probabilistic truncations give floor(P/s) or floor(P/s) + 1
    (Pond: TruncPr of Catrina-Saxena, ``_truncate_private_interactive``; ABY3:
    ``_truncate_msb0_secureq8_private`` after the heuristic lift), and exactly P/s when
    s divides P (there is no carry from the masked low part then).
    """
    out = np.asarray(out, dtype=np.int64)
    lo = floor_div(exact, scale)
    ok = (out == lo) | (out == lo + 1)
    divisible = np.remainder(exact, np.int64(scale)) == 0
    ok &= ~divisible | (out == lo)
    return ~ok


def conv2d_exact(x_nchw: np.ndarray, w_hwio: np.ndarray, strides: Sequence[int],
                 padding: str) -> np.ndarray:
    """Exact integer conv2d (NCHW input, HWIO kernel, NCHW output, TF padding rules).

    Computed with TensorFlow in float64 on integer-valued arrays; exact because every
    partial sum stays below 2**53 (asserted).
    """
    x = np.asarray(x_nchw, dtype=np.int64)
    w = np.asarray(w_hwio, dtype=np.int64)
    terms = w.shape[0] * w.shape[1] * w.shape[2]
    peak = int(np.max(np.abs(x), initial=0)) * int(np.max(np.abs(w), initial=0)) * terms
    assert peak < 2**53, "reference conv2d would not be exact in float64"
    out = tf.nn.conv2d(np.transpose(x, (0, 2, 3, 1)).astype(np.float64), w.astype(np.float64),
                       strides=[1, *strides, 1], padding=padding).numpy()
    return np.rint(np.transpose(out, (0, 3, 1, 2))).astype(np.int64)


def pond_relu_quantized(scale: int) -> dict[int, float]:
    """Pond.relu's coefficients as Pond actually uses them.

    Each float coefficient is lifted to a public constant with the same truncating
    encoding, so the polynomial Pond evaluates has q_k = trunc(w_k * s) / s. With base 3
    and 8 fractional digits (s = 6561), w6 and w8 encode to 0.
    """
    return {k: float(encode(w, scale)) / scale for k, w in POND_RELU_COEFFS.items()}


def poly(coeffs: dict[int, float], x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return sum(c * x**k for k, c in coeffs.items())


# ----------------------------------------------------------------------------------
# Hypothesis strategies
# ----------------------------------------------------------------------------------
def largest_below(bound: float, dtype: Any) -> float:
    """Largest ``dtype`` value strictly below ``bound`` (> 0)."""
    b = np.asarray(bound, dtype=dtype)
    while float(b) >= bound:
        b = np.nextafter(b, np.asarray(0, dtype=dtype))
    return float(b)


def edge_values(fp: hp.FixedPoint, dtype: Any, bound: float | None = None,
                inclusive: bool = False) -> list[float]:
    """0, +-resolution, +-(bound - resolution) and +-(largest value below bound).

    ``bound`` defaults to max_abs (exclusive); in that range every value is representable.
    """
    top = fp.max_abs if bound is None else bound
    res = fp.resolution
    cands = [0.0, res, 2 * res, 0.5 * res, top - res, largest_below(top, dtype)]
    if inclusive:
        cands.append(top)
    out: list[float] = []
    for c in cands:
        for v in (c, -c):
            v = float(np.asarray(v, dtype=dtype))
            if (abs(v) <= top if inclusive else abs(v) < top) and v not in out:
                out.append(v)
    return out


def element_strategy(fp: hp.FixedPoint, dtype: Any, bound: float | None = None,
                     inclusive: bool = False) -> st.SearchStrategy[float]:
    width = 32 if np.dtype(dtype) == np.float32 else 64
    top = fp.max_abs if bound is None else bound
    hi = float(np.asarray(top, dtype=dtype)) if inclusive else largest_below(top, dtype)
    return st.one_of(
        st.sampled_from(edge_values(fp, dtype, bound, inclusive)),
        st.floats(min_value=-hi, max_value=hi, width=width),
    )


def arrays_in_range(fp: hp.FixedPoint, dtype: Any, shape: Any, bound: float | None = None,
                    inclusive: bool = False) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtype, shape, elements=element_strategy(fp, dtype, bound, inclusive))


SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)
DTYPES = st.sampled_from([np.float64, np.float32])


# ----------------------------------------------------------------------------------
# Statistics for the secrecy checks
# ----------------------------------------------------------------------------------
def top_bits(u: np.ndarray, bits: int) -> np.ndarray:
    return (as_u64(u) >> np.uint64(64 - bits)).astype(np.int64)


def low_bits(u: np.ndarray, bits: int) -> np.ndarray:
    return (as_u64(u) & np.uint64(2**bits - 1)).astype(np.int64)


def view_bins(subject: Subject, shares: np.ndarray, party: int,
              pick: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """16-way bin index of one party's view of each shared element.

    Pond/SecureNN: server i sees share_i -> 4 bits of it. ABY3: server i sees the pair
    (x_i, x_{i+1}) -> 2 bits of each, so the joint distribution of the pair is tested.
    """
    if subject.replicated:
        a, b = shares[party][0], shares[party][1]
        return (pick(a, 2) << 2) | pick(b, 2)
    return pick(shares[party], 4)


def counts16(bins: np.ndarray) -> np.ndarray:
    return np.bincount(np.ravel(bins), minlength=16)


def to_unit_interval(u: np.ndarray) -> np.ndarray:
    """Top 53 bits of each ring element as a float in [0, 1) (for a KS test)."""
    return (as_u64(u) >> np.uint64(11)).astype(np.float64) / float(2**53)


# ----------------------------------------------------------------------------------
# Cluster checks (run in a fresh process: ``python tests/sharing_helpers.py cluster``)
# ----------------------------------------------------------------------------------
def cluster_cases(fp_by_name: dict[str, hp.FixedPoint], mul_bound: float,
                  seed: int = 20261126) -> dict[str, list[dict]]:
    """Deterministic cases per protocol: full-range x (edge values included) to share
    and reconstruct, and small a, b to multiply."""
    rng = np.random.default_rng(seed)
    cases: dict[str, list[dict]] = {}
    for name, fp in fp_by_name.items():
        edges = np.array(edge_values(fp, np.float64))
        hi = largest_below(fp.max_abs, np.float64)
        out = []
        for shape in [(), (len(edges),), (2, 1, 3)]:
            x = rng.uniform(-hi, hi, size=shape)
            if shape == (len(edges),):
                x = edges.copy()
            a = rng.uniform(-mul_bound, mul_bound, size=shape)
            b = rng.uniform(-mul_bound, mul_bound, size=shape)
            out.append({"x": np.asarray(x).tolist(), "a": np.asarray(a).tolist(),
                        "b": np.asarray(b).tolist(), "shape": list(shape)})
        cases[name] = out
    return cases


def _cluster_step(subject: Subject) -> Callable:
    """One compiled graph (traced per shape): share x, a, b; reveal x; multiply a * b."""

    @tf.function
    def run(x, a, b):
        xs = subject.prot.define_private_input(hp.CLIENT, lambda: x)
        as_ = subject.prot.define_private_input(hp.CLIENT, lambda: a)
        bs = subject.prot.define_private_input(hp.CLIENT, lambda: b)
        z = as_ * bs
        revealed = [v.value for v in xs.reveal().unwrapped]
        return raw_share_tensors(subject, xs), revealed, raw_share_tensors(subject, z)

    return run


def _cluster_main(request: dict) -> dict:
    from harness.net.cluster import Cluster  # noqa: PLC0415

    result: dict = {"protocols": {}}
    with Cluster() as cluster:
        result["worker_pids"] = [w.process.pid for w in cluster.workers if w.process]
        result["hostmap"] = dict(cluster.hostmap)
        config = cluster.connect()
        for name, cases in request["cases"].items():
            subject = build_subject(name, config)
            run = _cluster_step(subject)
            rows = []
            for case in cases:
                shape = case["shape"]
                args = [tf.constant(np.asarray(case[k], dtype=np.float64).reshape(shape))
                        for k in ("x", "a", "b")]
                x_sh, rev, z_sh = run(*args)
                rows.append({
                    "x_shares": np.asarray(x_sh).tolist(),
                    "x_share_devices": [t.device for t in tf.nest.flatten(x_sh)],
                    "revealed": np.asarray(rev).tolist(),
                    "z_shares": np.asarray(z_sh).tolist(),
                })
            result["protocols"][name] = {"rows": rows, "scale": subject.scale}
    return result


if __name__ == "__main__":
    if sys.argv[1:] != ["cluster"]:
        sys.exit("usage: python tests/sharing_helpers.py cluster  (JSON request on stdin)")
    out = _cluster_main(json.load(sys.stdin))
    print("SHARING-RESULT " + json.dumps(out))
