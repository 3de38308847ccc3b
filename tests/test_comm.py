"""Exact communication counts (``harness.inference.comm``) against hand computations.

A driver subprocess starts a real cluster (server0-2 and the prediction client as
worker processes), compiles small private computations with ``compile_step`` and
counts what TensorFlow sends between the players. Sizes: ring shares are int64
(8 bytes per element), a pair key is a ``SecureSeed`` (int32[8], 32 bytes), the
driver's inputs are float32. Which server gets the seed of a sharing is a coin
flip at trace time (``random.random`` in ``harness.tfe.speed.triples`` and
upstream); the driver fixes it (``flip`` 0: server0 gets the
seed, 1: server1) so that every link can be computed by hand; both flips are checked.

Sharing N values and revealing ``x + x`` to the client (Pond and SecureNN alike:
SecureNN inherits Pond's input sharing and reconstruction), tuned variant, flip 0:
the client draws one pair key and sends it to server0 (32 B), which derives its
share r from it; the client sends ``x - r`` to server1 (N x 8 B). Each server
doubles its share locally and sends it to the client to reconstruct (N x 8 B
each). Party rounds: 2 (client -> server -> client). With the driver: it sends
the input (N x 4 B) and fetches the float64 result the function leaves on the
client (N x 8 B): 4 transfers in a chain. (Without the doubling, Grappler drops
the Identity that moves ``x - r`` to server1, whose only user is back on the
client: that share is then never sent. What is counted is what TensorFlow runs.)

Private matmul under Pond of x (BxK) by y (KxM), both shared by the client
unscaled (no truncation), revealed to the client. Tuned (pair keys, flip 0):

- inputs: one pair key client -> server0 for both inputs (one key per pair and
  graph, ``pair_seeds``), the rests ``x - r`` and ``y - s`` to server1:
  32 B; (BK + KM) x 8 B in 2 tensors;
- masks (``SeededTripleSource.mask``): server2 sends one pair key to each
  server (32 B each) from which both derive a0, a1, b0, b1; nothing else;
- masked openings (``_mask_private``): alpha_i = x_i - a_i and beta_i = y_i - b_i
  go both ways between server0 and server1: (BK + KM) x 8 B, 2 tensors, each way;
- the product triple: server2 computes ab and splits it with the same pair keys:
  r is derived on server0, ``ab - r`` is sent to server1 (BM x 8 B);
- reveal: z0, z1 to the client (BM x 8 B each).

Stock (tf-encrypted's own code, flip 0): each input sends its own 32-B seed to
server0 and its rest to server1; the producer sends a0, b0 to server0 and a1, b1
to server1 as full tensors, and both product shares (BM x 8 B each, one random,
one ``ab - r``); openings and reveal as above.

Both variants also send one control transfer (an empty float32 tensor, 0 B)
client -> server2: TensorFlow's automatic control dependencies run stateful ops
that take no resource (``SecureSeed``) in program order, and the first seed is
drawn on the client, the next on server2. Party rounds: data 3 (client -> server1
-> server0 -> client); with the control edge 4 (client -> server2 -> server0 ->
server1 -> client); with the driver 5 (its input first, its fetch last).
"""
from __future__ import annotations

import json
import sys
import time

import pytest
import driver_process
from driver_process import run_driver

pytestmark = [pytest.mark.cluster]

N = 5  # values shared and revealed
B, K, M = 2, 3, 4  # matmul shapes: (B, K) x (K, M)
RING, KEY, FLOAT, DOUBLE = 8, 32, 4, 8
CLIENT = "prediction-client"
SERVERS = ("server0", "server1")


# -- the hand computations ------------------------------------------------------------
def _links(*entries: tuple[str, str, int, int, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for sender, receiver, nbytes, tensors, control in entries:
        entry = out.setdefault(f"{sender}->{receiver}",
                               {"bytes": 0, "tensors": 0, "control_tensors": 0})
        entry["bytes"] += nbytes
        entry["tensors"] += tensors
        entry["control_tensors"] += control
    return dict(sorted(out.items()))


def _summary(links: dict, driver_links: dict, rounds: int, data_rounds: int,
             rounds_with_driver: int) -> dict:
    return {
        "links": links, "rounds": rounds, "data_rounds": data_rounds,
        "party_bytes": sum(v["bytes"] for v in links.values()),
        "party_tensors": sum(v["tensors"] for v in links.values()),
        "driver_links": driver_links,
        "driver_bytes": sum(v["bytes"] for v in driver_links.values()),
        "driver_tensors": sum(v["tensors"] for v in driver_links.values()),
        "rounds_with_driver": rounds_with_driver,
    }


def expected_share_reveal(flip: int) -> dict:
    seeded, other = SERVERS if flip == 0 else SERVERS[::-1]
    links = _links((CLIENT, seeded, KEY, 1, 0), (CLIENT, other, N * RING, 1, 0),
                   ("server0", CLIENT, N * RING, 1, 0), ("server1", CLIENT, N * RING, 1, 0))
    driver = _links(("driver", CLIENT, N * FLOAT, 1, 0), (CLIENT, "driver", N * DOUBLE, 1, 0))
    return _summary(links, driver, rounds=2, data_rounds=2, rounds_with_driver=4)


def expected_matmul(variant: str, flip: int) -> dict:
    seeded, other = SERVERS if flip == 0 else SERVERS[::-1]
    inputs = (B * K + K * M) * RING
    if variant == "tuned":
        triples = [("server2", seeded, KEY, 1, 0), ("server2", other, KEY + B * M * RING, 2, 0)]
        keys = [(CLIENT, seeded, KEY, 1, 0)]
    else:
        produced = inputs + B * M * RING  # a_i, b_i and one product share per server
        triples = [("server2", "server0", produced, 3, 0), ("server2", "server1", produced, 3, 0)]
        keys = [(CLIENT, seeded, 2 * KEY, 2, 0)]
    # the Beaver openings of x and y: one tensor per direction when packed (tuned:
    # packed-openings), one per opened value in stock
    openings = 1 if variant == "tuned" else 2
    links = _links(*keys, (CLIENT, other, inputs, 2, 0), *triples,
                   ("server0", "server1", inputs, openings, 0),
                   ("server1", "server0", inputs, openings, 0),
                   ("server0", CLIENT, B * M * RING, 1, 0), ("server1", CLIENT, B * M * RING, 1, 0),
                   (CLIENT, "server2", 0, 1, 1))
    driver = _links(("driver", CLIENT, (B * K + K * M) * FLOAT, 2, 0),
                    (CLIENT, "driver", B * M * RING, 1, 0))  # unscaled: int64 result
    return _summary(links, driver, rounds=4, data_rounds=3, rounds_with_driver=5)


# -- the driver (run as a script in a subprocess) -------------------------------------
def _driver() -> None:
    import random
    import types
    from contextlib import contextmanager

    from harness.tfe import activate

    tfe = activate()
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.eager import context

    from harness.inference import comm
    from harness.net.cluster import Cluster
    from harness.tfe import protocols
    from harness.tfe.speed import triples
    from harness.tfe.tracing import compile_step

    @contextmanager
    def coin(flip: int):
        """Fix the trace-time coin flips of who gets a seed: 0 server0, 1 server1."""
        saved = random.random
        random.random = lambda: 0.75 * flip  # < 0.5: server0, else server1
        try:
            yield
        finally:
            random.random = saved

    def reveal_on_client(x):
        out = []
        tfe.define_output(CLIENT, [x], lambda v: out.append(tf.identity(v)))
        return out[0]

    def summary(count):
        out = {k: v for k, v in count.as_dict().items()
               if k not in ("method", "round_links", "schedule")}
        rounds = count.round_links()  # checked against the totals here, in full below
        report["round_checks"].append([
            sum(sum(r.values()) for r in rounds), out["party_bytes"] + out["driver_bytes"],
            len(rounds), out["rounds_with_driver"]])
        return out

    report: dict = {"share": {}, "matmul": {}, "errors": {}, "round_checks": []}
    x = tf.constant(np.arange(B * K, dtype=np.float32).reshape(B, K))
    y = tf.constant(np.arange(K * M, dtype=np.float32).reshape(K, M) - 5)
    values = tf.constant(np.linspace(-2, 2, N, dtype=np.float32))
    with Cluster() as cluster:
        report["pids"] = [w.process.pid for w in cluster.managed]
        config = cluster.connect()
        players = list(cluster.hostmap)

        def use(protocol: str, variant: str = "tuned") -> None:
            tfe.set_config(config)
            tfe.set_protocol(protocols.make(protocol, variant))

        for flip in (0, 1):
            for protocol in ("pond", "securenn"):
                use(protocol)

                @compile_step
                def share_reveal(v):
                    shared = tfe.define_private_input(CLIENT, lambda: v)
                    return reveal_on_client(shared + shared)

                with coin(flip):
                    count = comm.count(share_reveal, values, players=players)
                report["share"][f"{protocol}-{flip}"] = summary(count)
                report["doubled"] = share_reveal(values).numpy().tolist()
            for variant in ("tuned", "stock"):
                use("pond", variant)

                @compile_step
                def matmul(a, b):
                    xs = tfe.define_private_input(CLIENT, lambda: a, apply_scaling=False)
                    ys = tfe.define_private_input(CLIENT, lambda: b, apply_scaling=False)
                    return reveal_on_client(tfe.matmul(xs, ys))

                ctx = context.context()
                with coin(flip):  # the first call traces: see what that instantiation sends
                    ctx.enable_graph_collection()
                    ctx.enable_run_metadata()
                    try:
                        first = matmul(x, y)
                        metadata = ctx.export_run_metadata()
                    finally:
                        ctx.disable_run_metadata()
                        ctx.disable_graph_collection()
                graphs = [g for g in metadata.function_graphs if g.partition_graphs]
                counts = [summary(comm.count(matmul, x, y, players=players)) for _ in range(2)]
                report["matmul"][f"{variant}-{flip}"] = {
                    "first_call": summary(comm.count_graphs(graphs[0], players, [first])),
                    "counts": counts, "product": first.numpy().tolist(),
                    # counting runs the trace the calls run: no second trace
                    "traces": comm._graph_function(matmul).experimental_get_tracing_count()}

        server0, server1 = (config.get_player(n).device_name for n in SERVERS)

        @tf.function
        def loop(v):
            def body(i, w):
                with tf.device(server0):
                    w = w + 1.0
                with tf.device(server1):
                    w = w * 2.0
                return i + 1, w
            return tf.while_loop(lambda i, w: i < 3, body, [tf.constant(0), v])[1]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def dynamic(v):
            with tf.device(server0):
                w = v + 1.0
            with tf.device(server1):
                return w * 2.0

        two_outputs = driver_process.two_outputs(server0, server1)

        plain = comm.count(two_outputs, values, players=players)
        report["plain"] = summary(plain)
        report["plain_rounds"] = plain.round_links()
        report["plain_schedule"] = plain.as_dict()["schedule"]
        for name, fn in (("control_flow", loop), ("dynamic_shape", dynamic)):
            try:
                comm.count(fn, values, players=players)
                report["errors"][name] = None
            except comm.CommError as exc:
                report["errors"][name] = str(exc)
    print(json.dumps(report), flush=True)


# -- the tests ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured() -> dict:
    """What the driver measured (one cluster for all cases)."""
    return run_driver(__file__)


# (not "protocol"/"variant": the harness's pytest plugin parametrizes those names)
@pytest.mark.parametrize("flip", [0, 1])
@pytest.mark.parametrize("prot", ["pond", "securenn"])
def test_share_and_reveal_counts_match_hand_computation(measured, prot, flip):
    assert measured["share"][f"{prot}-{flip}"] == expected_share_reveal(flip)


def test_share_and_reveal_computes(measured):
    import numpy as np

    expected = 2 * np.linspace(-2, 2, N, dtype=np.float32)
    assert np.allclose(measured["doubled"], expected, atol=1e-3)


@pytest.mark.parametrize("flip", [0, 1])
@pytest.mark.parametrize("code", ["tuned", "stock"])
def test_matmul_counts_match_hand_computation(measured, code, flip):
    import numpy as np

    case = measured["matmul"][f"{code}-{flip}"]
    expected = expected_matmul(code, flip)
    assert case["counts"][0] == expected
    # the same figures from the function's own first instantiation, and again later
    assert case["first_call"] == expected
    assert case["counts"][1] == expected
    assert case["traces"] == 1
    x = np.arange(B * K).reshape(B, K)
    y = np.arange(K * M).reshape(K, M) - 5
    assert case["product"] == (x @ y).tolist()


def test_pair_keys_save_what_the_hand_computation_says(measured):
    tuned = measured["matmul"]["tuned-0"]["counts"][0]["party_bytes"]
    stock = measured["matmul"]["stock-0"]["counts"][0]["party_bytes"]
    # stock sends a second input seed and the four mask shares and one product share
    # in full; tuned sends two producer keys instead
    assert stock - tuned == KEY + 2 * (B * K + K * M) * RING + B * M * RING - 2 * KEY


def test_plain_function_with_two_results(measured):
    """Plain TensorFlow, no protocol: the driver's input goes to server0 (N x 4 B), w to
    server1 (N x 4 B); each result reaches the driver once, whether TensorFlow moves it
    inside the call or the driver fetches it afterwards. Chain: driver -> server0 ->
    server1 -> driver."""
    links = _links(("server0", "server1", N * FLOAT, 1, 0))
    driver = _links(("driver", "server0", N * FLOAT, 1, 0), ("server0", "driver", N * FLOAT, 1, 0),
                    ("server1", "driver", N * FLOAT, 1, 0))
    assert measured["plain"] == _summary(links, driver, rounds=1, data_rounds=1,
                                         rounds_with_driver=3)
    # per round: the input; then w to server1 and the result w to the driver (both
    # wait for the input only); then w * 2 to the driver
    assert measured["plain_rounds"] == [
        {"driver->server0": N * FLOAT},
        {"server0->driver": N * FLOAT, "server0->server1": N * FLOAT},
        {"server1->driver": N * FLOAT}]


def test_schedule_names_what_each_transfer_waits_for(measured):
    """The same function's transfers with their direct predecessors: w goes to server1
    and to the driver once the input has arrived; w * 2 once w reached server1."""
    schedule = measured["plain_schedule"]
    links = [link for link, _, _ in schedule]
    named = {link: (nbytes, sorted(links[j] for j in after)) for link, nbytes, after in schedule}
    assert len(named) == len(schedule) == 4
    assert named == {"driver->server0": (N * FLOAT, []),
                     "server0->server1": (N * FLOAT, ["driver->server0"]),
                     "server0->driver": (N * FLOAT, ["driver->server0"]),
                     "server1->driver": (N * FLOAT, ["server0->server1"])}


def test_rounds_hold_every_transfer_once(measured):
    """Every count's per-round bytes add up to its links' bytes, in rounds_with_driver
    rounds (the last round is the longest chain's last transfer)."""
    assert len(measured["round_checks"]) >= 10
    for round_bytes, link_bytes, rounds, longest in measured["round_checks"]:
        assert (round_bytes, rounds) == (link_bytes, longest)


def test_refuses_what_it_cannot_count_exactly(measured):
    errors = measured["errors"]
    assert errors["control_flow"] is not None and "control flow" in errors["control_flow"]
    assert errors["dynamic_shape"] is not None and "no static shape" in errors["dynamic_shape"]


def test_driver_left_no_workers(measured):
    import psutil

    deadline = time.monotonic() + 15
    alive = measured["pids"]
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    assert alive == []


def test_bad_input_gets_one_clear_error():
    from harness.inference import comm

    with pytest.raises(comm.CommError, match="neither a tf.function"):
        comm.count(lambda v: v, 1.0, players=["server0"])
    with pytest.raises(comm.CommError, match="not one of the players"):
        comm.player_of("/job:tfe/replica:0/task:7/device:CPU:0", ["server0"])
    with pytest.raises(comm.CommError, match="not one of the players"):
        comm.player_of("/job:worker/replica:0/task:0/device:CPU:0", ["server0"])
    assert comm.player_of("/job:localhost/replica:0/task:0/device:CPU:0", []) == comm.DRIVER


if __name__ == "__main__" and sys.argv[1:] == ["--driver"]:
    _driver()
