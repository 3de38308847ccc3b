"""``python -m harness client``: images in, private logits out (``PredictionClient``).

    python -m harness client --config hm.json --image 7 --image digit.npy --repeat 2
    python -m harness client --config hm.json --stdin     # one image per line, JSON back

Bad input (a file that is not numeric or not in [0, 1], NaN, an index outside the test
split) is refused with one error line before the client touches the cluster; an input
whose shape does not fit the served model's is refused once the client has read that
shape from the owner's descriptor, before anything is shared. With
``--stdin`` each line gets one JSON line back: the result, or ``{"error": ...}`` with
``"refused": true`` when the request was refused and never computed.

Who can derive what: as ``harness.inference.client``; this module only reads images
and prints this client's own results.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.inference.client import DEFAULT_TIMEOUT, DEFAULT_WAIT, PredictionClient, as_examples
from harness.inference.private import InputError
from harness.inference.serving_layout import ServingError


@functools.lru_cache(maxsize=1)
def _test_split() -> Any:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    return load_mnist()


def load_image(spec: str) -> tuple[np.ndarray, int | None]:
    """An image by test-split index (with its label) or from a ``.npy`` file."""
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        split = _test_split()
        index = int(text)
        if not 0 <= index < len(split.x_test):
            raise InputError(f"image index {index} is outside the test split "
                             f"(0..{len(split.x_test) - 1})")
        return split.x_test[index], int(split.y_test[index])
    path = Path(text)
    if not path.is_file():
        raise InputError(f"image {text!r} is neither a test-split index nor a .npy file")
    try:
        return np.load(path, allow_pickle=False), None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read image {path} as a .npy array: {exc}") from exc


def check_pixels(arr: np.ndarray, example: tuple[int, ...] | None = None) -> None:
    """The checks that need no protocol: dtype, the shape (against the served model's
    input shape ``example``, once known), NaN, [0, 1]."""
    if arr.dtype.kind not in "fiu":
        raise InputError(f"Images must be numeric, got dtype {arr.dtype}.")
    if example is not None:
        as_examples(arr, example)
    if not np.all(np.isfinite(arr)):
        raise InputError("Image contains NaN or inf.")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise InputError(f"Pixel values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}] "
                         "(scale 0..255 images by 1/255).")


def _result(spec: str, label: int | None, logits: np.ndarray, seconds: float) -> dict[str, Any]:
    flat = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
    out: dict[str, Any] = {"image": spec, "logits": flat[0].tolist() if len(flat) == 1
                           else flat.tolist(),
                           "prediction": int(flat[0].argmax()) if len(flat) == 1
                           else flat.argmax(-1).tolist(),
                           "latency_ms": seconds * 1e3}
    if label is not None:
        out["label"] = label
    return out


def _print(result: dict[str, Any]) -> None:
    label = f" (label {result['label']})" if "label" in result else ""
    print(f"image {result['image']}{label}: prediction {result['prediction']}, "
          f"{result['latency_ms']:.1f} ms")
    print("  logits " + " ".join(f"{v:+.4f}" for v in np.ravel(result["logits"])))


def _serve_stdin(client: PredictionClient) -> int:
    """One request per line of stdin (an image spec), one JSON line back per request."""
    _test_split()  # image indices refer to it: load it before saying ready
    print(json.dumps({"ready": True, "protocol": client.desc.protocol,
                      "session": client.desc.session, "slot": client.slot.index,
                      "connect_s": client.connect_s}), flush=True)
    for line in sys.stdin:
        spec = line.strip()
        if not spec:
            break
        start, cpu = time.perf_counter(), time.process_time()
        try:
            image, label = load_image(spec)
            check_pixels(np.asarray(image), client.example_shape)
            logits = client.predict(image)
            result = _result(spec, label, logits, time.perf_counter() - start)
            print(json.dumps({**result, **client.timing,
                              "cpu_ms": (time.process_time() - cpu) * 1e3}), flush=True)
        except InputError as exc:
            print(json.dumps({"image": spec, "error": str(exc), "refused": True}), flush=True)
        except ServingError as exc:  # e.g. no answer in time: say so, keep reading
            print(json.dumps({"image": spec, "error": str(exc), "refused": False,
                              "latency_ms": (time.perf_counter() - start) * 1e3}), flush=True)
    return 0


def run_client(config: str, images: list[str], repeat: int = 1, as_json: bool = False,
               timeout: float = DEFAULT_TIMEOUT, wait: float = DEFAULT_WAIT,
               stdin: bool = False) -> int:
    """``python -m harness client``: request private predictions, print the logits."""
    if repeat < 1:
        raise InputError("--repeat must be >= 1")
    if not stdin and not images:
        raise InputError("give --image PATH_OR_INDEX (repeatable) or --stdin")
    loaded = [(spec, *load_image(spec)) for spec in images]
    for spec, image, _ in loaded:  # refuse bad input before touching the cluster
        try:
            check_pixels(np.asarray(image))
        except InputError as exc:
            raise InputError(f"image {spec}: {exc}") from None
    client = PredictionClient(config, timeout=timeout, wait=wait)
    if stdin:
        return _serve_stdin(client)
    prepared = [(spec, client.prepare(image), label) for spec, image, label in loaded]
    results, start = [], time.perf_counter()
    for _ in range(repeat):
        for spec, arr, label in prepared:
            t0 = time.perf_counter()
            logits = client.predict(arr if arr.shape[0] > 1 else arr[0])
            results.append(_result(spec, label, logits, time.perf_counter() - t0))
    total = time.perf_counter() - start
    lat = [r["latency_ms"] for r in results]
    summary = {"protocol": client.desc.protocol, "session": client.desc.session,
               "slot": client.slot.index, "connect_s": client.connect_s, "requests": results,
               "latency_ms_first": lat[0], "latency_ms_median": float(np.median(lat)),
               "latency_ms_median_warm": float(np.median(lat[1:])) if len(lat) > 1 else None,
               "throughput_rps": len(results) / total if total > 0 else None}
    if as_json:
        print(json.dumps(summary))
    else:
        for r in results:
            _print(r)
        print(f"{len(results)} request(s), median {summary['latency_ms_median']:.1f} ms, "
              f"{summary['throughput_rps']:.2f} requests/s")
    return 0
