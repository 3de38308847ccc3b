"""Exact communication of a compiled private computation on a cluster.

TensorFlow runs a ``tf.function`` that spans several tasks by placing it, letting
Grappler optimise it, and cutting it into one partition graph per device; every
edge that crosses devices becomes a ``_Send``/``_Recv`` pair that moves exactly
one tensor per call. ``count(fn, *args, players=...)`` asks TensorFlow for those
partition graphs (graph collection on a fresh instantiation of ``fn``'s traced
definition, which also runs it once), and counts per directed link between
players (``count_prediction(model, images)`` for a ``PrivateModel`` on a cluster):

- ``bytes``: the transferred tensors' payload, ``elements x dtype size``, from
  static shapes (shape inference on the optimised graph; the batch size is
  fixed). RPC framing (gRPC, protobuf headers, rendezvous keys) is not included;
- ``tensors``: transfers, including ``control_tensors``: empty tensors TensorFlow
  sends so that a control dependency can cross devices (0 bytes, one message);
- ``rounds``: the longest chain of dependent transfers between parties, through
  the partition graphs (dependencies inside a partition + Send -> Recv edges);
  ``data_rounds`` does not count control transfers (they still order the chain).

Players are the workers' names (``/job:tfe/task:i`` is the i-th name of the
hostmap) and ``driver`` for the calling process (job ``localhost``). Traffic
with the driver (inputs, results, control outputs, and fetching the results
that the function leaves on a worker) is reported apart from traffic between
parties. Transfers between devices of one task are not counted. Anything that
would make a figure a guess (control flow that repeats or skips transfers,
nested function calls, a shape that is not static, a dtype without a fixed
size, an unmatched send) raises ``CommError``.
"""
from __future__ import annotations

import inspect
import math
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Sequence

from harness.tfe import activate as _activate_tfe

_activate_tfe()  # legacy Keras and our ops (SecureSeed, ...) before TensorFlow is used

import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import function_pb2  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402
from tensorflow.python.eager.polymorphic_function import function_type_utils  # noqa: E402

from harness.inference.comm_graph import CommError, direct_predecessors, longest_chains  # noqa: E402

DRIVER = "driver"
DRIVER_JOB = "localhost"
PLAYER_JOB = "tfe"
METHOD = ("counted from TensorFlow's partitioned graphs: every _Send/_Recv pair between "
          "two tasks of one fresh instantiation of the compiled function, sized from static "
          "shapes (tensor payload, no RPC framing), plus fetching results left on a worker")

FETCH = "fetch:"  # the tensor name prefix of a result the driver fetches
_SENDS = frozenset({"_Send", "_HostSend"})
_RECVS = frozenset({"_Recv", "_HostRecv"})
_CONTROL_FLOW = frozenset({
    "Switch", "RefSwitch", "_SwitchN", "Merge", "RefMerge", "Enter", "RefEnter", "Exit",
    "RefExit", "NextIteration", "RefNextIteration", "LoopCond", "ControlTrigger",
    "While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase",
})
_CALLS = frozenset({"PartitionedCall", "StatefulPartitionedCall", "SymbolicGradient",
                    "RemoteCall", "_XlaRun", "XlaLaunch"})


@dataclass(frozen=True)
class Transfer:
    """One tensor moved per call from ``sender`` to ``receiver`` (player names)."""

    sender: str
    receiver: str
    tensor: str  # rendezvous name of the transfer (or ``fetch:<i>`` for a result)
    source: str  # the producing node, ``name:slot``
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    control: bool = False  # an empty tensor standing for a control dependency
    level: int = 0  # its place on the longest chain of cross-task transfers ending with it
    after: tuple[int, ...] = ()  # the transfers (indices) it waits for, directly

    @property
    def link(self) -> str:
        return f"{self.sender}->{self.receiver}"

    @property
    def fetched(self) -> bool:
        """A result the function leaves on a worker, which the driver fetches after the call."""
        return self.receiver == DRIVER and self.tensor.startswith(FETCH)

    @property
    def party(self) -> bool:
        """Between two parties (the driver is not one)."""
        return DRIVER not in (self.sender, self.receiver)


@dataclass
class Communication:
    """What one call sends between tasks; ``as_dict()`` is the plain-dict form."""

    transfers: list[Transfer]
    rounds: int  # longest chain of dependent party -> party transfers
    data_rounds: int  # the same, not counting control transfers as rounds
    rounds_with_driver: int  # the longest chain counting transfers to/from the driver too

    def links(self, party: bool = True) -> dict[str, dict[str, int]]:
        """``{"a->b": {"bytes", "tensors", "control_tensors"}}``, sorted by link."""
        out: dict[str, dict[str, int]] = defaultdict(
            lambda: {"bytes": 0, "tensors": 0, "control_tensors": 0})
        for t in self.transfers:
            if t.party == party:
                entry = out[t.link]
                entry["bytes"] += t.nbytes
                entry["tensors"] += 1
                entry["control_tensors"] += int(t.control)
        return {k: dict(out[k]) for k in sorted(out)}

    def round_links(self) -> list[dict[str, int]]:
        """Bytes per link (driver links included) of each round: round k holds the
        transfers that are the k-th on the longest chain of cross-task transfers ending
        with them, i.e. that can start once k - 1 rounds have arrived."""
        rounds: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for t in self.transfers:
            rounds[t.level][t.link] += t.nbytes
        top = max(rounds, default=0)
        return [dict(sorted(rounds[k].items())) for k in range(1, top + 1)]

    def total(self, party: bool = True) -> tuple[int, int]:
        """(bytes, tensors) between parties, or with the driver."""
        picked = [t for t in self.transfers if t.party == party]
        return sum(t.nbytes for t in picked), len(picked)

    def as_dict(self) -> dict[str, Any]:
        party_bytes, party_tensors = self.total(party=True)
        driver_bytes, driver_tensors = self.total(party=False)
        return {
            "links": self.links(party=True),
            "rounds": self.rounds,
            "data_rounds": self.data_rounds,
            "party_bytes": party_bytes,
            "party_tensors": party_tensors,
            "driver_links": self.links(party=False),
            "driver_bytes": driver_bytes,
            "driver_tensors": driver_tensors,
            "rounds_with_driver": self.rounds_with_driver,
            "round_links": self.round_links(),
            # per transfer: link, bytes, the transfers it directly waits for (indices)
            "schedule": [[t.link, t.nbytes, list(t.after)] for t in self.transfers],
            "method": METHOD,
        }


# -- who is where -------------------------------------------------------------------
def _task(device: str) -> tuple[str, int, int]:
    spec = tf.DeviceSpec.from_string(device)
    if spec.job is None or spec.task is None:
        raise CommError(f"device {device!r} names no job/task: cannot tell which process it is")
    return spec.job, spec.replica or 0, spec.task


def player_of(device: str, players: Sequence[str]) -> str:
    """The player (hostmap name, or ``driver``) a fully specified device belongs to."""
    job, _, task = _task(device)
    if job == DRIVER_JOB:
        return DRIVER
    if job == PLAYER_JOB and 0 <= task < len(players):
        return players[task]
    raise CommError(f"device {device!r} is not one of the players {list(players)} "
                    f"(job {PLAYER_JOB!r}) nor the driver (job {DRIVER_JOB!r})")


# -- capturing the partition graphs ---------------------------------------------------
def _graph_function(fn: Any) -> Any:
    """``fn`` itself if it is a ``tf.function``; the one inside a ``tfe.function`` (or
    ``harness.tfe.tracing.compile_step``) wrapper."""
    if hasattr(fn, "get_concrete_function"):
        return fn
    found = [v for v in inspect.getclosurevars(fn).nonlocals.values()
             if hasattr(v, "get_concrete_function")] if inspect.isfunction(fn) else []
    if len(found) != 1:
        raise CommError(f"{fn!r} is neither a tf.function nor a tfe.function / "
                        "compile_step wrapper of exactly one")
    return found[0]


def _flat_call(fn: Any, args: tuple, kwargs: dict) -> tuple[Any, list[Any]]:
    """The traced concrete function of ``fn`` for these arguments and its flat inputs."""
    graph_fn = _graph_function(fn)
    if graph_fn is not fn:  # tfe.function's wrapper calls graph_fn(args, kwargs), unwrapped
        from tf_encrypted.protocol.protocol import input_unwrap  # noqa: PLC0415

        args, kwargs = tuple(input_unwrap(args, kwargs)), {}
    concrete = graph_fn.get_concrete_function(*args, **kwargs)
    bound = function_type_utils.canonicalize_function_inputs(args, kwargs, concrete.function_type)
    flat = list(concrete.function_type.unpack_inputs(bound)) + list(concrete.captured_inputs)
    return concrete, flat


def capture(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
    """Run ``fn``'s traced definition once, freshly instantiated under a new name, and
    return TensorFlow's graphs of that instantiation (``RunMetadata.FunctionGraphs``)
    and the call's outputs. ``fn``: a ``tf.function`` or ``tfe.function``."""
    concrete, flat = _flat_call(fn, args, kwargs)
    fdef = function_pb2.FunctionDef()
    fdef.CopyFrom(concrete._inference_function.cached_definition)  # noqa: SLF001
    if len(flat) != len(fdef.signature.input_arg):
        raise CommError(f"{len(flat)} inputs for a function of {len(fdef.signature.input_arg)}")
    name = f"{fdef.signature.name}_comm_{uuid.uuid4().hex[:12]}"
    fdef.signature.name = name
    ctx = context.context()
    ctx.add_function_def(fdef)
    ctx.enable_graph_collection()
    ctx.enable_run_metadata()
    try:
        outputs = ctx.call_function(name.encode(), flat, len(fdef.signature.output_arg)) or []
        context.async_wait()
        metadata = ctx.export_run_metadata()
    finally:
        ctx.disable_run_metadata()
        ctx.disable_graph_collection()
        ctx.remove_function(name)
    graphs = [g for g in metadata.function_graphs if g.partition_graphs]
    if len(graphs) != 1:
        raise CommError(f"TensorFlow returned {len(graphs)} partitioned functions for one "
                        "call, expected 1")
    return graphs[0], list(outputs)


# -- counting -----------------------------------------------------------------------
def _node_key(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def _static_shapes(graph_def: Any) -> tf.Graph:
    """The optimised (pre-partition) function graph, imported: TensorFlow's shape
    inference gives each output's static shape."""
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def _sent_tensor(send: Any, partition: dict[str, Any], shapes: tf.Graph,
                 optimised: dict[str, Any]) -> tuple[tf.DType, tuple[int, ...], bool]:
    """dtype, static shape and control flag of the tensor a ``_Send`` node sends."""
    ref = send.input[0]
    name, _, slot = ref.partition(":")
    dtype = tf.as_dtype(send.attr["T"].type)
    producer = partition.get(name)
    if producer is None:
        raise CommError(f"send {send.name!r}: its input {ref!r} is not in its partition")
    if producer.op == "Const" and name not in optimised:  # added by partitioning
        value = tf.make_ndarray(producer.attr["value"].tensor)
        return dtype, tuple(value.shape), "/ctrl/" in name and value.size == 0
    if name not in optimised or optimised[name].op != producer.op:
        raise CommError(f"send {send.name!r}: producer {name!r} ({producer.op}) is not in "
                        "the optimised function graph, its size is unknown")
    output = shapes.get_operation_by_name(name).outputs[int(slot or 0)]
    shape = output.shape
    if output.dtype != dtype:
        raise CommError(f"send {send.name!r} sends {dtype.name} but {ref!r} is "
                        f"{output.dtype.name}: not the tensor the graph says")
    if not shape.is_fully_defined():
        raise CommError(f"send {send.name!r}: {ref!r} has no static shape ({shape}); "
                        "fix the batch size and input shapes")
    return dtype, tuple(int(d) for d in shape), False


def _nbytes(dtype: tf.DType, shape: tuple[int, ...], what: str) -> int:
    if dtype in (tf.string, tf.resource, tf.variant) or not dtype.size:
        raise CommError(f"{what}: {dtype.name} tensors have no fixed size")
    elements = 1
    for d in shape:
        elements *= d
    return elements * dtype.size


def _check_supported(partitions: Sequence[Any], library: set[str]) -> None:
    for graph in partitions:
        for node in graph.node:
            if node.op in _CONTROL_FLOW:
                raise CommError(f"{node.name!r} is control flow ({node.op}): transfers could "
                                "run several times or not at all; not counted")
            if node.op in _CALLS or node.op in library:
                raise CommError(f"{node.name!r} calls a function ({node.op}): its transfers "
                                "are not in the partition graphs; not counted")


def count_graphs(graphs: Any, players: Sequence[str], outputs: Sequence[Any] = ()) -> Communication:
    """Count the transfers of one instantiation's ``RunMetadata.FunctionGraphs``;
    ``outputs``: the call's results (those left on a worker are fetched by the driver)."""
    partitions = list(graphs.partition_graphs)
    optimised = {n.name: n for n in graphs.post_optimization_graph.node}
    library = {f.signature.name for p in partitions for f in p.library.function}
    _check_supported(partitions, library)
    shapes = _static_shapes(graphs.post_optimization_graph)

    nodes: dict[tuple[int, str], Any] = {}
    sends: dict[tuple[str, str, str], tuple[int, Any]] = {}
    recvs: dict[tuple[str, str, str], tuple[int, Any]] = {}
    for index, graph in enumerate(partitions):
        for node in graph.node:
            nodes[(index, node.name)] = node
            if node.op in _SENDS or node.op in _RECVS:
                key = (node.attr["send_device"].s.decode(), node.attr["recv_device"].s.decode(),
                       node.attr["tensor_name"].s.decode())
                table = sends if node.op in _SENDS else recvs
                if key in table:
                    raise CommError(f"two {node.op} nodes for one rendezvous key {key}")
                table[key] = (index, node)
    if sends.keys() != recvs.keys():
        odd = sorted(sends.keys() ^ recvs.keys())[:3]
        raise CommError(f"sends and receives do not pair up, e.g. {odd}")

    by_name = [{n.name: n for n in graph.node} for graph in partitions]
    transfers: list[Transfer] = []
    received_at: list[tuple[int, str]] = []  # per transfer, its Recv node
    sent_at: list[tuple[int, str]] = []  # per transfer, its Send node
    crossing: dict[tuple, int] = {}  # (Send node, Recv node) -> transfer index
    # node -> [(next node, (party, party data, any cross-task) transfers on the edge)]
    edges: dict[tuple[int, str], list[tuple[tuple[int, str], tuple[int, ...]]]] = defaultdict(list)
    for (index, name), node in nodes.items():
        for ref in node.input:
            edges[(index, _node_key(ref))].append(((index, name), (0, 0, 0)))
    for key, (s_index, send) in sorted(sends.items()):
        r_index, recv = recvs[key]
        src_dev, dst_dev, tensor = key
        weights = (0, 0, 0)
        if _task(src_dev) != _task(dst_dev):
            dtype, shape, control = _sent_tensor(send, by_name[s_index], shapes, optimised)
            transfers.append(Transfer(
                player_of(src_dev, players), player_of(dst_dev, players), tensor,
                send.input[0], dtype.name, shape,
                _nbytes(dtype, shape, f"send {send.name!r}"), control))
            received_at.append((r_index, recv.name))
            sent_at.append((s_index, send.name))
            crossing[(sent_at[-1], received_at[-1])] = len(transfers) - 1
            last = transfers[-1]
            weights = (int(last.party), int(last.party and not last.control), 1)
        edges[(s_index, send.name)].append(((r_index, recv.name), weights))

    chains, behind = longest_chains(nodes, edges, crossing)
    waits = [behind[at] for at in sent_at]
    transfers = [replace(t, level=chains[at][2], after=direct_predecessors(waits[i], waits))
                 for i, (t, at) in enumerate(zip(transfers, received_at))]
    with_driver = max((v[2] for v in chains.values()), default=0)
    # partitions renumber their _Retval nodes; the optimised graph has the call's order
    retvals = {n.attr["index"].i: n.name for n in optimised.values() if n.op == "_Retval"}
    for i, out in enumerate(outputs):  # results left on a worker: the driver fetches them
        device = getattr(out, "device", "") or ""
        if not device or player_of(device, players) == DRIVER:
            continue
        dtype, shape = tf.as_dtype(out.dtype), tuple(int(d) for d in out.shape)
        where = [k for k in nodes if k[1] == retvals.get(i)]
        if len(where) != 1:
            raise CommError(f"output {i}: {len(where)} _Retval nodes for it, expected 1")
        transfers.append(Transfer(player_of(device, players), DRIVER, f"{FETCH}{i}",
                                  f"output:{i}", dtype.name, shape,
                                  _nbytes(dtype, shape, f"output {i}"),
                                  level=chains[where[0]][2] + 1,
                                  after=direct_predecessors(behind[where[0]], waits)))
        with_driver = max(with_driver, chains[where[0]][2] + 1)
    return Communication(transfers, max((v[0] for v in chains.values()), default=0),
                         max((v[1] for v in chains.values()), default=0), with_driver)


def count(fn: Any, *args: Any, players: Sequence[str], **kwargs: Any) -> Communication:
    """Exact per-call communication of ``fn(*args, **kwargs)`` (a ``tf.function`` or
    ``tfe.function`` over a connected cluster; ``players``: the hostmap's names in
    order). Runs the computation once."""
    graphs, outputs = capture(fn, *args, **kwargs)
    return count_graphs(graphs, players, outputs)


def count_prediction(model: Any, images: Any) -> Communication:
    """Exact communication of one private prediction of ``model`` (a ``PrivateModel``
    on a cluster) for a batch of ``images``; traces the model first if needed."""
    from harness.inference.private import check_images  # noqa: PLC0415

    if model.cluster is None:
        raise CommError("this model runs in-process: its players share one process and "
                        "send nothing between processes; build it with cluster=")
    arr = check_images(images, model.batch_size, model.fixed_point)
    if math.isnan(model.timing.first_call_s):  # not traced yet
        model.predict(arr)
    with model.cluster.guard():
        return count(model._step, tf.constant(arr),  # noqa: SLF001
                     players=list(model.cluster.hostmap))
