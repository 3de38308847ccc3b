"""Tests of the published figures shown beside ours (``harness.results.papers``).

The packaged ``papers.json`` and small synthetic rows of ours; no TensorFlow work.
"""
from __future__ import annotations

import ast
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.results import papers

# The SecureNN paper's Table 7 as the team quotes it: batch -> network -> (LAN s, WAN s, MB).
TABLE7 = {
    1: {"A": (0.043, 2.43, 2.1), "B": (0.13, 3.93, 8.86), "C": (0.23, 4.08, 18.94),
        "D": (0.076, 3.06, 4.05)},
    128: {"A": (0.38, 2.79, 29), "B": (7.18, 21.99, 1066), "C": (10.82, 30.45, 1550),
          "D": (2.6, 8.04, 317.7)},
}
OURS = [
    {"model": "minionn", "protocol": "securenn", "batch": 1, "bytes_per_prediction": 2.8e6,
     "rounds": 120, "lan_s": 0.0412, "lan_mark": "measured", "wan_s": 3.3,
     "wan_mark": "projected"},
    {"model": "B", "protocol": "ABY3", "batch": 1, "bytes_per_prediction": 1.65e6,
     "lan_s": 0.076, "lan_mark": "emulated"},
    {"model": "tutorial", "protocol": "securenn", "batch": 1, "bytes_per_prediction": 7.0e6,
     "lan_s": 0.06, "lan_mark": "measured"},
]


@pytest.fixture(scope="module")
def published() -> papers.Papers:
    return papers.load()


@pytest.fixture
def raw() -> dict[str, Any]:
    return json.loads(papers.PAPERS_PATH.read_text(encoding="utf-8"))


def _figure(pub: papers.Papers, network: str, system: str, batch: int,
            net: str) -> papers.Figure:
    found = [f for f in pub.figures if (f.network, f.system, f.batch, f.setting.network)
             == (network, system, batch, net)]
    assert len(found) == 1, (network, system, batch, net, found)
    return found[0]


# -- the data file ----------------------------------------------------------------------
def test_packaged_file_loads(published: papers.Papers) -> None:
    assert papers.PAPERS_PATH.name == "papers.json"
    assert len(published.figures) >= 18
    assert {"securenn", "aby3", "falcon"} <= set(published.sources)


def test_every_figure_cites_a_source_with_a_url(published: papers.Papers) -> None:
    for fig in published.figures:
        assert re.match(r"^https://\S+$", fig.url), fig.id
        assert fig.source.title in fig.citation and str(fig.source.year) in fig.citation
        assert fig.table and fig.table in fig.citation, fig.id
        assert fig.source.authors and fig.source.venue, fig.id
        assert fig.confirmed_by.strip(), fig.id
    for source in published.sources.values():
        assert source.url.startswith("https://") and source.confirmed_by.strip()


@pytest.mark.parametrize("batch", sorted(TABLE7))
@pytest.mark.parametrize("network", papers.NETWORKS)
def test_securenn_table7_values(published: papers.Papers, network: str, batch: int) -> None:
    lan_s, wan_s, mb = TABLE7[batch][network]
    lan = _figure(published, network, "SecureNN", batch, "LAN")
    wan = _figure(published, network, "SecureNN", batch, "WAN")
    assert (lan.latency_s, wan.latency_s) == (lan_s, wan_s)
    assert lan.communication_MB == wan.communication_MB == mb
    assert lan.table == wan.table == "Table 7" and lan.source.key == "securenn"
    assert lan.parties == 3 and lan.setting.key == "securenn-lan"


def test_securenn_settings_and_aby3_quotes(published: papers.Papers) -> None:
    lan, wan = published.settings["securenn-lan"], published.settings["securenn-wan"]
    assert (lan.bandwidth_MBps, lan.ping_ms) == (625, 0.22)
    assert (wan.bandwidth_MBps, wan.ping_ms) == (40, 58)
    assert "c4.8xlarge" in lan.machines
    for network, latency, mb in (("A", 0.008, 0.5), ("D", 0.01, 5.2)):
        fig = _figure(published, network, "ABY3", 1, "LAN")
        assert (fig.latency_s, fig.communication_MB) == (latency, mb)
        assert fig.source.key == "securenn" and fig.quotes.key == "aby3"
        assert "ABY3" in fig.citation and "SecureNN" in fig.citation
    accuracy = published.sources["securenn"].plaintext_accuracy["values"]
    assert accuracy == {"A": 0.934, "B": 0.9877, "C": 0.9915, "D": 0.99}


def test_confirmed_only_drops_the_unconfirmed(published: papers.Papers) -> None:
    assert not papers.is_confirmed("unconfirmed") and not papers.is_confirmed("Unconfirmed: x")
    assert papers.is_confirmed("the PoPETs PDF, Table 7")
    kept = papers.load(confirmed_only=True).figures
    assert {f.id for f in kept} == {f.id for f in published.figures if f.confirmed}
    assert all(papers.is_confirmed(f.confirmed_by) for f in kept)


def test_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(papers.__file__).read_text(encoding="utf-8"))
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module}
    assert roots and roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


# -- malformed files --------------------------------------------------------------------
def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d["figures"][0].pop(key)


MALFORMED = [
    (_drop("table"), r"figure 'securenn-A-b1-lan': missing field\(s\) table"),
    (_drop("id"), r"figure #0 \(no id\): missing field\(s\) id"),
    (lambda d: d["figures"][1].update(latency=1.0),
     r"figure 'securenn-A-b1-wan': unknown field\(s\) latency"),
    (lambda d: d["figures"][2].update(latency_s=-0.5),
     r"figure 'securenn-A-b128-lan': field latency_s must be a positive number"),
    (lambda d: d["figures"][0].update(batch=True), r"field batch must be an integer >= 1"),
    (lambda d: d["figures"][0].update(network="E"), r"field network must be one of A, B, C, D"),
    (lambda d: d["figures"][0].update(source="nowhere"),
     r"figure 'securenn-A-b1-lan': source 'nowhere' is not a defined source"),
    (lambda d: d["figures"][0].update(setting="moon"), r"setting 'moon' is not a defined"),
    (lambda d: d["figures"].append(copy.deepcopy(d["figures"][0])),
     r"duplicates figure 'securenn-A-b1-lan'"),
    (lambda d: d["sources"]["aby3"].update(url="eprint 2018/403"),
     r"source 'aby3': field url must be a public http\(s\) URL"),
    (lambda d: d["sources"]["falcon"].pop("authors"),
     r"source 'falcon': missing field\(s\) authors"),
    (lambda d: d["settings"]["securenn-wan"].update(network="5G"),
     r"setting 'securenn-wan': field network must be LAN or WAN"),
    (lambda d: d.update(schema=2), r"schema 2 is not 1"),
    (lambda d: d.pop("settings"), r"expected the keys"),
]


@pytest.mark.parametrize("mutate,message", MALFORMED)
def test_malformed_file_gives_a_clear_error(raw: dict[str, Any], tmp_path: Path,
                                            mutate: Callable[[dict], None], message: str) -> None:
    mutate(raw)
    path = tmp_path / "papers.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(papers.PapersError, match=r"^papers\.json: .*" + message):
        papers.load(path)


def test_invalid_json_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "papers.json"
    path.write_text('{"schema": 1,', encoding="utf-8")
    with pytest.raises(papers.PapersError, match=r"papers\.json: not valid JSON"):
        papers.load(path)


# -- theirs beside ours -----------------------------------------------------------------
def test_model_aliases_match_the_zoo() -> None:
    zoo = pytest.importorskip("models.zoo")  # no TensorFlow at import
    for name in zoo.names():
        for key in (name, *zoo.get(name).aliases):
            assert papers.canonical_model(key.upper()) == name
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        papers.canonical_model("vgg16")


def test_beside_rows_put_ours_next_to_theirs(published: papers.Papers) -> None:
    rows = papers.beside_rows(OURS, published, networks=["minionn", "tutorial"])
    keys = [(r["network"], r["protocol"], r["batch"], r["who"]) for r in rows]
    mine = keys.index(("B", "securenn", 1, "ours"))
    assert keys[mine - 1] == ("B", "securenn", 1, "theirs (unconfirmed)")
    assert ("B", "securenn", 128, "theirs (unconfirmed)") in keys[mine + 1:]
    assert keys[-1] == ("tutorial", "securenn", 1, "ours")
    assert {k[0] for k in keys} == {"B", "tutorial"}
    theirs = rows[mine - 1]
    assert (theirs["lan_s"], theirs["wan_s"], theirs["mb_batch"]) == (0.13, 3.93, 8.86)
    assert theirs["lan_mark"] == theirs["wan_mark"] == "theirs"
    assert theirs["cite"]["url"].startswith("https://petsymposium.org/")
    ours = rows[mine]
    assert (ours["lan_mark"], ours["wan_mark"], ours["rounds"]) == ("measured", "projected", 120)
    assert ours["mb_per_prediction"] == pytest.approx(2.8) and ours["cite"] is None
    assert rows[-1]["note"] == "no published figure"
    big = next(r for r in rows if r["who"] != "ours" and r["batch"] == 128)
    assert big["mb_per_prediction"] == pytest.approx(1066 / 128)


def test_beside_rows_show_every_network_by_default(published: papers.Papers) -> None:
    rows = papers.beside_rows([], published)
    assert {r["network"] for r in rows} == set(papers.NETWORKS)
    assert len(rows) == 8 + 2  # SecureNN: 4 networks x 2 batches; ABY3: A and D


def test_our_latency_needs_a_mark(published: papers.Papers) -> None:
    row = {"model": "C", "protocol": "securenn", "batch": 1, "lan_s": 0.2}
    with pytest.raises(ValueError, match=r"our row #0 \('C', 'securenn'\): lan_s needs lan_mark"):
        papers.beside_rows([row], published)
    with pytest.raises(ValueError, match="lan_mark"):
        papers.beside_rows([{**row, "lan_mark": "guessed"}], published)


def test_render_markdown(published: papers.Papers) -> None:
    text = papers.render_markdown(papers.beside_rows(OURS, published, networks=["B", "tutorial"]))
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 2 + 1  # header, rule, theirs b1 + b128, ours x2, tutorial
    assert len({line.count("|") for line in table}) == 1
    assert "| B (MiniONN) | SecureNN | ours | 1 | - | 2.8 | 2.8 | 120 | 0.0412 s (measured) " \
           "| 3.3 s (projected) | - |" in text
    assert "0.13 s (theirs) | 3.93 s (theirs) | [1] |" in text
    assert "21.99 s (theirs)" in text and "| 1066 | 8.328 |" in text  # stated figures unrounded
    assert "0.076 s (emulated)" in text and "no published figure" in text
    assert "1. Wagh, Gupta and Chandran, \"SecureNN" in text and "Table 7. https://" in text
    assert "SecureNN LAN: 625 MB/s, 0.22 ms ping" in text
    assert "*theirs* = published figure, not measured here" in text
