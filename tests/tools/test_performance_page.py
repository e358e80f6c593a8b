"""docs/performance.md is what docs/performance.json says, and benchmarks/suite.py runs (a smoke run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import make_performance  # noqa: E402


def test_performance_page_is_current():
    assert make_performance.main(["--check"]) == 0, "run: python benchmarks/make_performance.py"


def test_committed_run_has_every_section_and_row():
    import suite

    data = json.loads(make_performance.AFTER.read_text())
    assert set(data["sections"]) == set(suite.SECTIONS) and not data["meta"]["quick"]
    step_rows = {(r["row"], r["width"], r["batch"]) for r in data["sections"]["step"]}
    assert step_rows >= {(name, w, b) for name in suite.STEP_ARMS for w, b in suite.STEP_SIZES}


def test_suite_smoke_run_writes_a_page(tmp_path):
    import suite

    out = tmp_path / "perf.json"
    # backend "eager": dynamo's capture (graph breaks, recompiles) without inductor's minutes of codegen
    result = suite.main(["--quick", "--silent", "--backend", "eager", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert {r["row"] for r in result["sections"]["step"]} == set(suite.STEP_ARMS)
    assert all(r["cpu"] > 0 and r["cpu_iqr"][0] <= r["cpu"] <= r["cpu_iqr"][1] for r in result["sections"]["step"])
    compiled = {r["row"]: r for r in result["sections"]["compiled"]}
    for name in ("gpn", "arp", "arp+gpn"):
        assert compiled[name]["graph_breaks"] == 0 and compiled[name]["recompiles"] == 0, compiled[name]
    assert all(r["ratio"] > 0 for r in result["sections"]["memory"])
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{make_performance.START}\nold\n{make_performance.END}\nafter\n")
    page = tmp_path / "performance.md"
    args = ["--json", str(out), "--before", str(out), "--page", str(page), "--readme", str(readme)]
    assert make_performance.main(args) == 0 and make_performance.main([*args, "--check"]) == 0
    assert "| gpn | 32 / 8 |" in page.read_text() and "old" not in readme.read_text()


def test_cheaper_settings_quote_the_run_and_vanish_without_its_rows():
    data = json.loads(make_performance.AFTER.read_text())
    text = make_performance.cheaper_settings(data)
    compiled = {r["row"]: r for r in data["sections"]["compiled"]}
    step = {(r["row"], r["width"], r["batch"]): r for r in data["sections"]["step"]}
    clock = data["meta"]["clock"]
    for name in ("gpn", "arp", "arp+gpn"):
        assert f"{name} {'costs ' if name == 'gpn' else ''}{compiled[name][clock]:.2f}× (eager:" in text
        assert f"(eager: {step[(name, 256, 128)][clock]:.2f}×)" in text
    assert f"{step[('orthogonal{every=8}', 1024, 32)][clock + '_total']:.2f}× on average" in text
    partial = {**data, "sections": {**data["sections"], "compiled": []}}
    assert make_performance.cheaper_settings(partial) == ""
