"""scripts/bench_flood.py on tiny sizes: its program-level counts are exact (BPF_PROG_TEST_RUN
on a map of 1,000 entries against 3,000 spoofed sources), its in-place run under dnsperf
loses no hit of the line, and it leaves no pin, namespace or folder behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ccxdp.lab.netns import list_netns

pytestmark = [pytest.mark.root, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]


def _leftovers() -> dict[str, set[str]]:
    return {"netns": {n for n in list_netns() if n.startswith("bfl")},
            "pins": {p.name for p in Path("/sys/fs/bpf").glob("ccxdp-bench-flood-*")},
            "tmp": {p.name for p in Path("/tmp").glob("ccxdp-bench-flood-*")}}


def test_bench_flood_counts_exactly_and_leaves_nothing(tmp_path):
    before = _leftovers()
    out = tmp_path / "flood.json"
    cp = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_flood.py"), "--flood",
                         "3000", "--sources", "500", "--repeat", "1000", "--rounds", "1",
                         "--in-place", "--seconds", "1", "--json", str(out)],
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    figures = json.loads(out.read_text())
    program = figures["program"]
    # The line's first query comes at the 300th spoofed one, before 1,000 entries fill the
    # map: without a plan (or inside a wide one) it keeps counting; the 2,002 sources that
    # came after the map filled (3,000 spoofed + the line's 2 - 1,000) are lost.
    exact = ("line_v4_sent", "line_v4_counted", "line_v6_sent", "line_v6_counted",
             "source_lost", "outside_plan", "blocked", "map_entries")
    assert {k: program["no_plan"][k] for k in exact} == {
        "line_v4_sent": 3, "line_v4_counted": 3, "line_v6_sent": 3, "line_v6_counted": 3,
        "source_lost": 2002, "outside_plan": 0, "blocked": 3006, "map_entries": 1000}
    assert {k: program["plan"][k] for k in exact} == {
        "line_v4_sent": 3, "line_v4_counted": 3, "line_v6_sent": 3, "line_v6_counted": 3,
        "source_lost": 0, "outside_plan": 3000, "blocked": 3006, "map_entries": 2}
    assert {k: program["wide_plan"][k] for k in exact} == {k: program["no_plan"][k]
                                                             for k in exact}
    assert set(program["cost"]) == {"empty program", "spoofed, outside the plan",
                                    "the line, inside the plan", "the line, no plan"}
    for run in ("alone", "flood"):
        r = figures["in_place"][run]
        assert r["source_lost"] == 0, run
        assert 0 < r["line_counted"] <= r["dnsperf_sent"], run
        assert r["prog_ns_per_packet"] > 0, run
    flood = figures["in_place"]["flood"]
    assert 0 < flood["outside_plan"] <= flood["flood_sent"]
    assert figures["in_place"]["alone"]["outside_plan"] == 0
    assert _leftovers() == before
