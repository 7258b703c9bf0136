"""benches/report.py renders from whatever JSON exists: the committed results, and none at all
(every figure then reads "not measured"; no section may raise on a missing file). A present JSON
is read through its bench's schema (benches/_summary.py): a renamed, missing or mistyped key stops
the report with a SummaryError naming the file and the key."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("matplotlib")


@pytest.fixture
def summary(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benches"))
    return importlib.import_module("_summary")


@pytest.fixture
def report(monkeypatch, summary):
    spec = importlib.util.spec_from_file_location("seqkv_bench_report", ROOT / "benches" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_renders_from_committed_json(report, tmp_path):
    text = report.Report(tmp_path).build()
    assert text.startswith("# seqkv evaluation report")
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## Where each figure comes from"):
        assert section in text
    assert (tmp_path / "bits_per_token.png").stat().st_size > 0


@pytest.mark.timeout(120)
def test_renders_with_no_json(report, tmp_path, monkeypatch):
    empty = tmp_path / "results"
    empty.mkdir()
    monkeypatch.setattr(report, "RESULTS", empty)
    monkeypatch.setattr(report, "RUNS", empty / "quick")
    out = tmp_path / "out"
    out.mkdir()
    text = report.Report(out).build()
    assert "not measured" in text
    # the arithmetic needs no JSON: the paper's 914,000x is 70B without GQA
    assert "914,456×" in text


COMMITTED = sorted((ROOT / "benches" / "results").glob("*.json")) + sorted((ROOT / "benches" / "results" / "quick").glob("*.json"))


@pytest.fixture
def results_copy(report, tmp_path, monkeypatch):
    """A copy of the committed benches/results/ that the report reads instead."""
    res = tmp_path / "results"
    shutil.copytree(ROOT / "benches" / "results", res)
    monkeypatch.setattr(report, "RESULTS", res)
    monkeypatch.setattr(report, "RUNS", res / "quick")
    return res


def edit_json(path: Path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "benches" / "results")))
def test_committed_json_match_their_schemas(summary, path):
    summary.load_summary(path, summary.schema_for(path.stem.removesuffix("-quick")))


@pytest.mark.timeout(120)
def test_a_renamed_key_fails_the_report(report, summary, results_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report.Report(out).build()  # the copies of the committed JSON render

    def rename(d):
        d["encode_speedup"] = d.pop("encode_speedup_vs_constriction")

    edit_json(results_copy / "coder.json", rename)
    with pytest.raises(summary.SummaryError, match=r"coder\.json: key 'encode_speedup_vs_constriction' is missing"):
        report.Report(out).build()


@pytest.mark.timeout(120)
def test_a_mistyped_nested_key_fails_the_report(report, summary, results_copy, tmp_path):
    def mistype(d):
        d["restore"]["256"]["hot_ms"] = "fast"

    edit_json(results_copy / "store.json", mistype)
    with pytest.raises(summary.SummaryError, match=r"store\.json: key 'restore\.256\.hot_ms' is str, the schema says float"):
        report.Report(tmp_path).build()


@pytest.mark.timeout(120)
def test_a_present_file_that_is_not_json_fails_the_report(report, summary, results_copy, tmp_path):
    (results_copy / "plt.json").write_text("{")
    with pytest.raises(summary.SummaryError, match=r"plt\.json: .* is not valid JSON"):
        report.Report(tmp_path).build()


@pytest.mark.timeout(120)
def test_a_tier_the_store_bench_adds_is_rendered(report, results_copy, tmp_path):
    """The store bench may time more restore tiers than the schema names (``<tier>_ms``, with a
    ``<tier>_reason`` where it could not): the report renders them."""

    def add_tier(d):
        d["restore"]["256"].update(new_tier_ms=1.5, other_reason="why")

    edit_json(results_copy / "store.json", add_tier)
    text = report.Report(tmp_path).build()
    assert "new tier" in text and "why" in text


def test_write_summary_rejects_a_renamed_key_and_keeps_the_numbers(summary, tmp_path):
    stress = json.loads((ROOT / "benches" / "results" / "stress.json").read_text())
    stress["checks_passed"] = stress.pop("all_checks_passed")
    out = tmp_path / "stress.json"
    with pytest.raises(summary.SummaryError, match=r"stress\.json: key 'all_checks_passed' is missing"):
        summary.write_summary(out, summary.Stress, stress)
    assert not out.exists()
    assert json.loads((tmp_path / "stress.rejected.json").read_text())["checks_passed"] is True


def test_write_summary_stamps_the_end_load_average(summary, tmp_path):
    stress = json.loads((ROOT / "benches" / "results" / "stress.json").read_text())
    del stress["machine"]["loadavg_end"]
    summary.write_summary(tmp_path / "stress.json", summary.Stress, stress)
    assert len(summary.load_summary(tmp_path / "stress.json", summary.Stress)["machine"]["loadavg_end"]) == 3


def test_get_walks_dicts_and_lists(report):
    d = {"a": {"b": [1, 2, {"c": 3}]}, "n": None}
    assert report.get(d, "a", "b", 2, "c") == 3
    assert report.get(d, "a", "b", 5) is None
    assert report.get(d, "n", "x") is None
    assert report.fmt(None) == "not measured"
