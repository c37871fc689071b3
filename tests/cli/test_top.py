"""`ccxdp top`: the pure renderer on known snapshots (exact layout), then the real command for
a few refreshes against the lab while a client queries."""

from __future__ import annotations

import io
import signal
import subprocess
import time

import pytest
from rich.console import Console

from ccxdp.cli.top import TopSnapshot, render_top
from ccxdp.datapath import shared
from ccxdp.hits.stats import SourceStat, StatsSnapshot
from ccxdp.ops.metrics import MapFill
from tests.conftest import one_line_error


def stats(blocked: int, passed: int, nxdomain: int, drop: int, sources=(), lost=0):
    outcomes = {o.name.lower(): 0 for o in shared.Outcome}
    outcomes.update(blocked=blocked, passed=passed)
    actions = {a.name.lower(): 0 for a in shared.Action if a != shared.Action.DEFAULT}
    actions.update(nxdomain=nxdomain, drop=drop)
    return StatsSnapshot(
        outcomes=outcomes,
        malformed={m.name.lower(): 0 for m in shared.Malformed},
        events={"source_lost": lost, "answer_failed": 0},
        actions=actions,
        sources=tuple(sources),
        names=3,
    )


FILL = (MapFill("names", 3, 1 << 20), MapFill("sources", 3, 4096), MapFill("exempt", 0, 65536))
CATEGORIES = {1: "emotet", 2: "qakbot"}


def render(cur, prev=None, top=10) -> str:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None, force_terminal=True)
    console.print(render_top(cur, prev, top))
    return out.getvalue()


def test_layout_of_a_known_snapshot():
    prev = TopSnapshot(100.0, stats(10, 50, 8, 2), FILL, CATEGORIES)
    srcs = [SourceStat("198.18.0.20", 1, 12, 0, 0), SourceStat("fd00::20", 2, 5, 0, 0),
            SourceStat("198.18.0.21", 1, 3, 0, 0)]
    cur = TopSnapshot(102.0, stats(30, 90, 24, 6, srcs, lost=7), FILL, CATEGORIES)
    text = render(cur, prev)
    lines = [line.rstrip() for line in text.splitlines()]
    # 60 judged queries and 20 blocked in 2 seconds.
    assert lines[0] == "ccxdp top  queries/s 30.0  blocked/s 10.0"
    assert lines[1] == "frames 120  queries 120  blocked 30  names 3"
    assert lines[2] == ("map fill  names 3/1,048,576 0.0%  sources 3/4,096 0.1%  "
                        "exempt 0/65,536 0.0%")
    # The actions, and beside them the categories: two sources' hits summed.
    assert lines[6] == " drop     │     6 │ 2.0      emotet   │   15 │       2"
    assert lines[7] == " nxdomain │    24 │ 8.0      qakbot   │    5 │       1"
    assert lines[12] == " monitor  │     0 │ 0.0"
    assert lines[16:19] == [" 198.18.0.20 │ emotet   │                 12",
                            " fd00::20    │ qakbot   │                  5",
                            " 198.18.0.21 │ emotet   │                  3"]
    assert lines[-1] == "source_lost 7"
    # Top sources in order, emotet's first.
    assert text.index("198.18.0.20") < text.index("fd00::20") < text.index("198.18.0.21")


def test_first_frame_has_no_rates_and_top_limits_rows():
    srcs = [SourceStat(f"198.18.0.{i}", 1, 100 - i, 0, 0) for i in range(20)]
    text = render(TopSnapshot(5.0, stats(0, 0, 0, 0, srcs), FILL, {}), None, top=4)
    assert "queries/s –  blocked/s –" in text
    assert " nxdomain │     0 │  –" in text
    shown = [i for i in range(20) if f"198.18.0.{i} " in text]
    assert shown == [0, 1, 2, 3]
    assert " category-1 │ 1,810 │      20" in text  # unnamed category: its id, as records


@pytest.mark.root
@pytest.mark.netns
def test_top_refreshes_against_the_lab(ccxdp, lab, tmp_path):
    lab.native_tx_peer()
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt)
    ccxdp.run("block", "add", "evil.test", "--action", "nxdomain", "--category", "emotet")
    for _ in range(3):
        assert lab.query("evil.test").rcode() == 3  # NXDOMAIN
    argv = [str(ccxdp.exe), "--pin-dir", str(ccxdp.pin_dir), "--state-dir",
            str(ccxdp.state_dir), "top", "--iterations", "3", "--interval", "0.3"]
    started = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert time.monotonic() - started >= 0.9  # three refreshes, 0.3 s apart
    assert "blocked 3" in cp.stdout
    assert " nxdomain │     3 │" in cp.stdout
    assert f" {lab.cli_v4} " in cp.stdout and "emotet" in cp.stdout
    # Read-only: it never took the lock, and a command beside it still runs.
    assert ccxdp.json("stats")["outcomes"]["blocked"] == 3


@pytest.mark.root
@pytest.mark.netns
def test_top_quits_cleanly_on_ctrl_c(ccxdp, lab):
    ccxdp.json("attach", lab.res_if, *lab.res_netns_opt)
    argv = [str(ccxdp.exe), "--pin-dir", str(ccxdp.pin_dir), "--state-dir",
            str(ccxdp.state_dir), "top", "--interval", "0.2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "map fill" in out


@pytest.mark.root
def test_top_without_a_loaded_filter_is_one_clear_error(ccxdp):
    cp = ccxdp.run("top", "--once", check=False)
    one_line_error(cp, 1, "not loaded", "ccxdp attach")


def test_no_category_is_spelled_as_everywhere():
    srcs = [SourceStat("198.18.0.20", 0, 4, 0, 0)]
    text = render(TopSnapshot(5.0, stats(4, 0, 4, 0, srcs), FILL, CATEGORIES), None)
    assert " 198.18.0.20 │ (none)   │                  4" in text
    assert " (none)   │    4 │       1" in text


def test_a_frame_fits_a_24_row_terminal():
    """80 columns by 24 rows, 21 sources in 9 categories, one of them a long IPv6 address:
    the whole frame fits (rich's Live would cut the rest off), as many sources as room
    leaves, and the foot says what was left out. Addresses are text, never emoji codes."""
    srcs = [SourceStat("fd00:1234:5678:9abc:def0:1234:5678:9abc", 1, 300, 0, 0)] + [
        SourceStat(f"198.18.0.{i}", i % 9, 100 - i, 0, 0) for i in range(20)]
    cur = TopSnapshot(5.0, stats(10, 20, 8, 2, srcs), FILL, CATEGORIES)
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, color_system=None, force_terminal=True)
    console.print(render_top(cur, cur, 10, height=24, width=80))
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert len(lines) == 24
    assert lines[16] == " fd00:1234:5678:9abc:def0:1234:5678:9abc │ emotet     │" + " " * 16 + "300"
    assert [line.split()[0] for line in lines[17:23]] == [
        f"198.18.0.{i}" for i in range(6)]
    assert lines[23] == "source_lost 0  not shown: 14 sources, 2 categories"
    # A taller terminal shows the --top asked for, and nothing is left out then.
    out = io.StringIO()
    console = Console(file=out, width=80, height=60, color_system=None, force_terminal=True)
    console.print(render_top(cur, cur, 10, height=60, width=80))
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert len(lines) == 2 + 1 + 3 + 9 + 3 + 10 + 1  # the categories' 9 rows set the band
    assert lines[-1] == "source_lost 0  not shown: 11 sources"
