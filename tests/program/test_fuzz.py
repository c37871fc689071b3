"""The differential fuzzer's short run: 100,000 generated and mutated frames through the XDP
program (BPF_PROG_TEST_RUN) and the reference model written from the docs
(tests/harness/xdp_model.py), with the same verdict, the same output frame and the same
counters and per-source hits required of both. scripts/fuzz_datapath.py makes long runs.

The seed is fixed so that a failure replays; the long runs draw new ones."""

from __future__ import annotations

import random

import pytest

from ccxdp.datapath import libbpf
from tests.conftest import make_pin_dir, remove_pins
from tests.harness import fuzz
from tests.harness import xdp_model as model

pytestmark = pytest.mark.root

SEED = 20261204
# Small per-source map: 2 x 8 entries, so that batches fill it and source_lost is judged too.
LIMITS = dict(max_names=4096, max_sources=8)


def _kernel(state_root, name: str, cflags: tuple[str, ...] = ()):
    from ccxdp.datapath.loader import Datapath, Limits

    pin_dir = make_pin_dir()
    dp = Datapath(pin_dir, state_root / name, cflags)
    try:
        with dp:
            fd = dp.load(Limits(**LIMITS))
        kernel = fuzz.Kernel(dp, fd)
        try:
            yield kernel
        finally:
            kernel.close()
            libbpf.close(fd)
    finally:
        remove_pins(pin_dir)


@pytest.fixture(scope="module")
def kernel(state_root):
    yield from _kernel(state_root, "fuzz")


@pytest.fixture(scope="module")
def kernel_no_tailroom(state_root):
    """The build whose frames never grow at the tail: every longer answer grows at the head,
    as on a veth or in generic mode."""
    yield from _kernel(state_root, "fuzz-no-tailroom", ("-DCCXDP_TEST_NO_TAIL_GROW",))


def check(report: fuzz.Report, frames: int) -> None:
    assert report.frames == frames
    assert not report.divergences, "\n".join(str(d) for d in report.divergences[:5])


def test_fuzz_against_the_model(kernel):
    """80,000 frames; each scenario's first batch also holds every cut of a few answered
    queries. Every outcome, malformed reason, event, action and verdict must come up: a run
    that never reached one has not compared it."""
    cuts = random.Random(SEED + 1)
    report = fuzz.Fuzzer(kernel, SEED).run(
        80_000, extra=lambda scenario: fuzz.systematic_cuts(cuts, scenario))
    check(report, 80_000)
    for name in fuzz.STAT_NAMES:
        if name == "action.default":  # resolved before it is counted: never counted
            continue
        if name == "event.answer_failed":  # frames under BPF_PROG_TEST_RUN always grow
            continue
        assert report.counts[name] >= 20, f"{name} came up {report.counts[name]} times"
    assert min(report.verdicts[v] for v in (model.XDP_PASS, model.XDP_DROP, model.XDP_TX)) > 500


def test_fuzz_answers_grown_at_the_head(kernel_no_tailroom):
    report = fuzz.Fuzzer(kernel_no_tailroom, SEED + 2).run(20_000)
    check(report, 20_000)
    assert report.verdicts[model.XDP_TX] > 200


def test_the_comparison_finds_a_model_that_is_wrong(kernel, monkeypatch):
    """The run compares what it says it does: a model off by one in the answer's hop limit,
    or one that counts one source too many, is caught on the first frame that shows it."""
    monkeypatch.setattr(model, "ANSWER_HOPS", 63)
    report = fuzz.Fuzzer(kernel, SEED, max_divergences=1).run(20_000)
    assert [d.what for d in report.divergences] == ["frame"]
    assert report.divergences[0].why.startswith("blocked, answered")
    monkeypatch.undo()

    kernel.source_capacity += 1
    try:  # stops at the first batch that overflows the map
        report = fuzz.Fuzzer(kernel, SEED, max_divergences=1).run(80_000)
    finally:
        kernel.source_capacity -= 1
    assert [d.what for d in report.divergences] == ["counters"]
    assert "source_lost" in report.divergences[0].got
    assert report.divergences[0].frame  # the frame is named, for the report
