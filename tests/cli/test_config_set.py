"""`config set` refuses a bad value in one line, by the setting's own rule, and changes
nothing: a negative number is a value (not an option click does not know), and an
IPv4-mapped IPv6 address is no AAAA sinkhole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import one_line_error

CCXDP = Path(sys.executable).parent / "ccxdp"


@pytest.mark.parametrize("key, value, reason", [
    ("answer_ttl", "-1", "answer_ttl: -1 is outside 0..2147483647"),
    ("negative_ttl", "-300", "negative_ttl: -300 is outside 0..2147483647"),
    ("edns_udp_size", "-5x", "edns_udp_size: '-5x' is not a whole number"),
    ("sinkhole_v6", "::ffff:1.2.3.4", "sinkhole_v6: '::ffff:1.2.3.4' is an IPv4-mapped "
                                      "address: give 1.2.3.4 as sinkhole_v4"),
], ids=["negative-ttl", "negative-negative-ttl", "negative-junk", "mapped-v6"])
def test_a_bad_value_is_one_line_and_changes_nothing(tmp_path, key, value, reason):
    state = tmp_path / "state"
    cp = subprocess.run([str(CCXDP), "--pin-dir", str(tmp_path / "pins"), "--state-dir",
                         str(state), "config", "set", key, value], capture_output=True,
                        text=True, timeout=60)
    line = one_line_error(cp, 2, reason)
    assert line.startswith(f"Error: Invalid value for 'VALUE': {reason}"), line
    assert "No such option" not in cp.stderr
    assert not state.exists()
