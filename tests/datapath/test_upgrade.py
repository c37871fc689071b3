"""Pins left by a ccxdp whose name table had another layout (the program pin of an earlier
version beside its maps): the loader refuses to mix them with this version's and says how
to move on, and changes nothing."""

from __future__ import annotations

import pytest

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.loader import Datapath, Limits
from ccxdp.errors import DatapathError
from tests.conftest import make_pin_dir, remove_pins

pytestmark = pytest.mark.root


def test_pins_of_the_sorted_slot_table_are_refused_with_the_way_out(tmp_path):
    pin_dir = make_pin_dir()
    pin_dir.mkdir(mode=0o700)
    try:
        # What the version before the buckets left: its program (any XDP program will do for
        # the loader, which goes by the pin's name) and its name maps' pins.
        fd = libbpf.prog_load(6, libbpf.pack_insn(0xB7, dst=0, imm=2) + libbpf.pack_insn(0x95),
                              name="old_ccxdp")
        try:
            libbpf.obj_pin(fd, pin_dir / "ccxdp_xdp_v6")
        finally:
            libbpf.close(fd)
        before = sorted(p.name for p in pin_dir.iterdir())
        dp = Datapath(pin_dir, tmp_path / "state")
        with dp, pytest.raises(DatapathError) as err:
            dp.load(Limits(max_names=1024, max_sources=16))
        assert str(err.value) == (
            f"{pin_dir} holds ccxdp_xdp_v6 from another ccxdp version: detach it everywhere "
            "and purge the pins ('ccxdp detach IFACE --purge'), then attach again (the "
            "catalog and settings are kept)")
        assert sorted(p.name for p in pin_dir.iterdir()) == before
        assert shared.PROG_PIN != "ccxdp_xdp_v6"
    finally:
        remove_pins(pin_dir)
