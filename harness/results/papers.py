"""Published figures of private MNIST inference, shown beside ours ("theirs" vs "ours").

``papers.json`` (next to this module, shipped as package data) holds every published
figure the report shows: network (A-D of the SecureNN paper), system, parties, setting
(LAN/WAN with its stated bandwidth and ping), batch, latency, communication, rounds,
threat model, ring, its source (authors, title, venue, year, URL), the table it comes
from and what it was checked against (``confirmed_by``; "unconfirmed..." when nobody has
read it in the paper yet).

* :func:`load` reads and validates the file; a malformed file raises :class:`PapersError`
  naming the row and the field.
* :func:`beside_rows` puts our rows (model, protocol, batch, bytes per prediction,
  rounds, LAN/WAN seconds, each latency marked measured/emulated/projected) next to
  theirs for the same network and protocol; our ``tutorial`` model has no published
  figure and is listed on its own.
* :func:`render_markdown` turns those rows into a Markdown table with numbered
  citations and the settings their figures were taken in.

Standard library only: no TensorFlow, no numpy.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

PAPERS_PATH = Path(__file__).with_name("papers.json")
SCHEMA = 1
UNCONFIRMED = "unconfirmed"
LATENCY_MARKS = ("measured", "emulated", "projected")
MARK_MEANING = {"theirs": "published figure, not measured here",
                "measured": "timed by this harness",
                "emulated": "timed by this harness over an emulated (shaped) link",
                "projected": "estimated by this harness, not timed"}
NETWORKS = ("A", "B", "C", "D")
# Zoo names and aliases (as in models/zoo.py), lower case -> canonical name.
MODEL_ALIASES = {"a": "A", "secureml": "A", "b": "B", "minionn": "B", "c": "C", "lenet": "C",
                 "d": "D", "chameleon": "D", "tutorial": "tutorial", "conv_mnist": "tutorial"}
MODEL_LABEL = {"A": "A (SecureML)", "B": "B (MiniONN)", "C": "C (LeNet)", "D": "D (Chameleon)",
               "tutorial": "tutorial"}
MODEL_ORDER = (*NETWORKS, "tutorial")
PROTOCOL_LABEL = {"securenn": "SecureNN", "aby3": "ABY3", "falcon": "Falcon", "pond": "Pond"}
PROTOCOL_ORDER = ("securenn", "aby3", "falcon", "pond")

_TOP_KEYS = {"schema", "about", "sources", "settings", "figures"}
# Field -> (kind, may be null); fields marked optional may also be left out.
_SOURCE_SPEC = {"authors": ("names", False), "title": ("text", False), "venue": ("text", False),
                "year": ("year", False), "url": ("url", False), "confirmed_by": ("text", False),
                "doi": ("text", True), "other_urls": ("urls", True),
                "threat_model": ("text", True), "note": ("text", True),
                "plaintext_accuracy": ("accuracy", True)}
_SOURCE_OPTIONAL = {"doi", "other_urls", "threat_model", "note", "plaintext_accuracy"}
_SETTING_SPEC = {"network": ("lan/wan", False), "bandwidth_MBps": ("positive", True),
                 "ping_ms": ("positive", True), "machines": ("text", True),
                 "stated_in": ("source", False), "confirmed_by": ("text", False),
                 "note": ("text", True)}
_SETTING_OPTIONAL = {"note"}
_FIGURE_SPEC = {"id": ("text", False), "network": ("network", False), "system": ("text", False),
                "parties": ("parties", False), "setting": ("setting", False),
                "batch": ("count", False), "latency_s": ("positive", False),
                "communication_MB": ("positive", True), "rounds": ("count", True),
                "threat_model": ("text", False), "ring": ("text", True),
                "source": ("source", False), "table": ("text", False),
                "confirmed_by": ("text", False), "quotes": ("source", True),
                "note": ("text", True)}
_FIGURE_OPTIONAL = {"quotes", "note"}
_URL = re.compile(r"^https?://\S+$")


class PapersError(ValueError):
    """A malformed papers data file; the message names the row and the field."""


def is_confirmed(confirmed_by: str) -> bool:
    """False for "unconfirmed" (or "unconfirmed: why"), True for a named check."""
    return not confirmed_by.strip().lower().startswith(UNCONFIRMED)


@dataclass(frozen=True)
class Source:
    key: str
    authors: tuple[str, ...]
    title: str
    venue: str
    year: int
    url: str
    confirmed_by: str
    doi: str | None = None
    other_urls: tuple[str, ...] | None = None
    threat_model: str | None = None
    note: str | None = None
    plaintext_accuracy: Mapping[str, Any] | None = None

    def citation(self, table: str | None = None) -> str:
        """Authors, title, venue, year[, table]."""
        names = [a.split()[-1] for a in self.authors]
        who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        text = f"{who}, \"{self.title}\", {self.venue}, {self.year}"
        return f"{text}, {table}" if table else text


@dataclass(frozen=True)
class Setting:
    key: str
    network: str
    bandwidth_MBps: float | None
    ping_ms: float | None
    machines: str | None
    stated_in: Source
    confirmed_by: str
    note: str | None = None

    def describe(self) -> str:
        """"LAN: 625 MB/s, 0.22 ms ping, machines (note)", flagged when unconfirmed."""
        parts = [f"{self.bandwidth_MBps:g} MB/s" if self.bandwidth_MBps else "bandwidth -",
                 f"{self.ping_ms:g} ms ping" if self.ping_ms else "ping -", self.machines]
        text = f"{self.network}: " + ", ".join(p for p in parts if p)
        text += f" ({self.note})" if self.note else ""
        return text if is_confirmed(self.confirmed_by) else text + " [unconfirmed]"


@dataclass(frozen=True)
class Figure:
    id: str
    network: str
    system: str
    parties: int
    setting: Setting
    batch: int
    latency_s: float
    communication_MB: float | None
    rounds: int | None
    threat_model: str
    ring: str | None
    source: Source
    table: str
    confirmed_by: str
    quotes: Source | None = None
    note: str | None = None

    @property
    def confirmed(self) -> bool:
        return is_confirmed(self.confirmed_by)

    @property
    def citation(self) -> str:
        text = self.source.citation(self.table)
        return text + (f"; quoting {self.quotes.citation()}" if self.quotes else "")

    @property
    def url(self) -> str:
        return self.source.url


@dataclass(frozen=True)
class Papers:
    sources: Mapping[str, Source]
    settings: Mapping[str, Setting]
    figures: tuple[Figure, ...]


# -- validation -------------------------------------------------------------------------
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_KINDS = {
    "text": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "url": (lambda v: isinstance(v, str) and bool(_URL.match(v)), "a public http(s) URL"),
    "urls": (lambda v: isinstance(v, list) and all(isinstance(u, str) and _URL.match(u)
                                                   for u in v), "a list of http(s) URLs"),
    "names": (lambda v: isinstance(v, list) and bool(v) and all(
        isinstance(a, str) and a.strip() for a in v), "a non-empty list of names"),
    "year": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1900, "a year"),
    "positive": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "an integer >= 1"),
    "parties": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
                "an integer >= 2"),
    "network": (lambda v: v in NETWORKS, f"one of {', '.join(NETWORKS)}"),
    "lan/wan": (lambda v: v in ("LAN", "WAN"), "LAN or WAN"),
    "accuracy": (lambda v: isinstance(v, dict) and set(v) == {"values", "confirmed_by"}
                 and _KINDS["text"][0](v["confirmed_by"]) and isinstance(v["values"], dict)
                 and all(k in NETWORKS and _is_num(a) and 0 < a <= 1
                         for k, a in v["values"].items()),
                 "{values: {network: fraction in (0, 1]}, confirmed_by: text}"),
}


def _check(row: Any, what: str, spec: Mapping[str, tuple[str, bool]], optional: set[str],
           refs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The row's fields, checked against ``spec``, with source/setting ids resolved."""
    if not isinstance(row, dict):
        raise PapersError(f"{what}: expected an object, got {type(row).__name__}")
    missing = sorted(set(spec) - optional - row.keys())
    unknown = sorted(row.keys() - spec.keys())
    if missing:
        raise PapersError(f"{what}: missing field(s) {', '.join(missing)}")
    if unknown:
        raise PapersError(f"{what}: unknown field(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(spec))})")
    out = {}
    for key, value in row.items():
        kind, nullable = spec[key]
        if value is None and nullable:
            out[key] = None
        elif kind in refs:
            if value not in refs[kind]:
                raise PapersError(f"{what}: {key} {value!r} is not a defined {kind} "
                                  f"(known: {', '.join(sorted(refs[kind]))})")
            out[key] = refs[kind][value]
        elif not _KINDS[kind][0](value):
            raise PapersError(f"{what}: field {key} must be {_KINDS[kind][1]}, got {value!r}")
        else:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def validate(data: Any, *, confirmed_only: bool = False) -> Papers:
    """Check a parsed papers document and resolve its references (see :func:`load`)."""
    if not isinstance(data, dict) or set(data) != _TOP_KEYS:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise PapersError(f"papers file: expected the keys {', '.join(sorted(_TOP_KEYS))}, "
                          f"got {got}")
    if data["schema"] != SCHEMA:
        raise PapersError(f"papers file: schema {data['schema']!r} is not {SCHEMA}")
    if not (isinstance(data["sources"], dict) and isinstance(data["settings"], dict)
            and isinstance(data["figures"], list)):
        raise PapersError("papers file: sources and settings must be objects keyed by id, "
                          "figures a list")
    sources = {k: Source(key=k, **_check(v, f"source {k!r}", _SOURCE_SPEC, _SOURCE_OPTIONAL,
                                         {})) for k, v in data["sources"].items()}
    settings = {k: Setting(key=k, **_check(v, f"setting {k!r}", _SETTING_SPEC,
                                           _SETTING_OPTIONAL, {"source": sources}))
                for k, v in data["settings"].items()}
    refs = {"source": sources, "setting": settings}
    figures, seen = [], {}
    for i, row in enumerate(data["figures"]):
        rid = row.get("id") if isinstance(row, dict) else None
        what = f"figure {rid!r}" if isinstance(rid, str) and rid else f"figure #{i} (no id)"
        fig = Figure(**_check(row, what, _FIGURE_SPEC, _FIGURE_OPTIONAL, refs))
        for key in (fig.id, (fig.network, fig.system, fig.batch, fig.setting.key, fig.source.key)):
            if key in seen:
                raise PapersError(f"{what}: duplicates figure {seen[key]!r}")
            seen[key] = fig.id
        figures.append(fig)
    if confirmed_only:
        figures = [f for f in figures if f.confirmed]
    return Papers(sources=sources, settings=settings, figures=tuple(figures))


def load(path: str | Path = PAPERS_PATH, *, confirmed_only: bool = False) -> Papers:
    """The validated published figures of ``path`` (default: the packaged papers.json).

    ``confirmed_only`` drops the figures whose ``confirmed_by`` says "unconfirmed".
    Raises :class:`PapersError` for a malformed file, naming the row and the field.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PapersError(f"{path.name}: not valid JSON ({exc})") from None
    try:
        return validate(data, confirmed_only=confirmed_only)
    except PapersError as exc:
        raise PapersError(f"{path.name}: {exc}") from None


# -- theirs beside ours -----------------------------------------------------------------
def canonical_model(name: str) -> str:
    """``A``..``D`` or ``tutorial`` for a zoo name or alias (case-insensitive)."""
    key = MODEL_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"unknown model {name!r}; choose one of: "
                         "A (secureml), B (minionn), C (lenet), D (chameleon), tutorial")
    return key


def _ours(index: int, row: Mapping[str, Any]) -> dict[str, Any]:
    what = f"our row #{index} ({row.get('model')!r}, {row.get('protocol')!r})"
    for key in ("model", "protocol", "batch"):
        if row.get(key) is None:
            raise ValueError(f"{what}: missing {key}")
    network = canonical_model(row["model"])
    out = {"network": network, "protocol": str(row["protocol"]).strip().lower(), "who": "ours",
           "batch": int(row["batch"]), "parties": row.get("parties"), "rounds": row.get("rounds"),
           "cite": None, "note": None if network in NETWORKS else "no published figure"}
    per = row.get("bytes_per_prediction")
    out["mb_per_prediction"] = None if per is None else per / 1e6
    out["mb_batch"] = None if per is None else per * out["batch"] / 1e6
    for net in ("lan", "wan"):
        value, mark = row.get(f"{net}_s"), row.get(f"{net}_mark")
        if value is not None and mark not in LATENCY_MARKS:
            raise ValueError(f"{what}: {net}_s needs {net}_mark, one of {', '.join(LATENCY_MARKS)};"
                             f" got {mark!r}")
        out[f"{net}_s"], out[f"{net}_mark"] = value, (mark if value is not None else None)
    return out


def _theirs(figures: Iterable[Figure]) -> list[dict[str, Any]]:
    """One row per network, system, batch and source, with its LAN and WAN figures."""
    rows: dict[tuple, dict[str, Any]] = {}
    for fig in figures:
        key = (fig.network, fig.system, fig.batch, fig.source.key, fig.quotes)
        row = rows.setdefault(key, {
            "network": fig.network, "protocol": fig.system.strip().lower(), "system": fig.system,
            "who": "theirs", "batch": fig.batch, "parties": fig.parties, "rounds": fig.rounds,
            "mb_batch": fig.communication_MB,
            "mb_per_prediction": (None if fig.communication_MB is None
                                  else fig.communication_MB / fig.batch),
            "lan_s": None, "lan_mark": None, "wan_s": None, "wan_mark": None,
            "cite": {"text": fig.citation, "url": fig.url}, "settings": [], "confirmed": True,
            "note": fig.note})
        net = fig.setting.network.lower()
        row[f"{net}_s"], row[f"{net}_mark"] = fig.latency_s, "theirs"
        row["settings"].append(fig.setting)
        row["confirmed"] = row["confirmed"] and fig.confirmed
        if not row["confirmed"]:
            row["who"] = "theirs (unconfirmed)"
    return list(rows.values())


def beside_rows(ours: Sequence[Mapping[str, Any]], papers: Papers | None = None, *,
                networks: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the "beside the papers" table: theirs, then ours, per network and protocol.

    ``ours``: dicts with ``model`` (zoo name or alias), ``protocol``, ``batch`` and any of
    ``bytes_per_prediction``, ``rounds`` (protocol communication rounds per prediction,
    not benchmark repetitions), ``parties``, ``lan_s``/``lan_mark`` and
    ``wan_s``/``wan_mark`` (mark: measured, emulated or projected). Every published figure
    of ``papers`` (default: :func:`load`) for the networks shown is listed, marked "theirs"
    ("theirs (unconfirmed)" when not checked against the paper). Our ``tutorial`` rows
    come last with "no published figure".
    """
    papers = load() if papers is None else papers
    mine = [_ours(i, r) for i, r in enumerate(ours)]
    shown = ({canonical_model(n) for n in networks} if networks is not None
             else set(NETWORKS) | {r["network"] for r in mine})
    rows = [r for r in _theirs(papers.figures) + mine if r["network"] in shown]

    def order(row: dict[str, Any]) -> tuple:
        proto = row["protocol"]
        rank = PROTOCOL_ORDER.index(proto) if proto in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
        return (MODEL_ORDER.index(row["network"]), rank, proto, row["batch"],
                row["who"] == "ours")
    return sorted(rows, key=order)


# -- Markdown ---------------------------------------------------------------------------
def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def _latency(value: Any, mark: str | None) -> str:
    return "-" if value is None else f"{_num(value)} s ({mark})"


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`beside_rows`, numbered citations and their settings."""
    cites: dict[str, int] = {}
    settings: dict[str, tuple[int, Setting]] = {}
    body = []
    for row in rows:
        source = "-"
        if row.get("cite"):
            text = f"{row['cite']['text']}. {row['cite']['url']}"
            n = cites.setdefault(text, len(cites) + 1)
            source = f"[{n}]"
            for setting in row.get("settings", ()):
                settings.setdefault(setting.key, (n, setting))
        elif row.get("note"):
            source = row["note"]
        system = row.get("system") or PROTOCOL_LABEL.get(row["protocol"], row["protocol"])
        body.append((MODEL_LABEL[row["network"]], system, row["who"], row["batch"],
                     _num(row.get("parties")), _num(row.get("mb_batch")),
                     _num(row.get("mb_per_prediction")), _num(row.get("rounds")),
                     _latency(row.get("lan_s"), row.get("lan_mark")),
                     _latency(row.get("wan_s"), row.get("wan_mark")), source))
    header = ("network", "protocol", "who", "batch", "parties", "MB per batch",
              "MB per prediction", "rounds", "LAN", "WAN", "source")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    lines += ["", "Marks: " + "; ".join(f"*{k}* = {v}" for k, v in MARK_MEANING.items())
              + ". \"-\" = not stated or not measured. MB = 10^6 bytes; their MB per "
              "prediction is their batch total divided by the batch."]
    if cites:
        lines += ["", "Sources:", ""] + [f"{n}. {text}" for text, n in cites.items()]
    if settings:
        lines += ["", "Their settings:", ""] + [
            f"- [{n}] {s.stated_in.title.split(':')[0]} {s.describe()}"
            for n, s in sorted(settings.values(), key=lambda p: (p[0], p[1].key))]
    return "\n".join(lines) + "\n"
