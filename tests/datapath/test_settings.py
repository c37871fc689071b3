"""The run-time settings as the kernel's config map holds them: fragments and unparsed are one
bit each of pass_unjudged, drop by default; bad values are refused with the key named."""

from __future__ import annotations

import pytest

from ccxdp.datapath import shared
from ccxdp.datapath.settings import SETTING_KEYS, SettingError, Settings


def test_fragments_and_unparsed_drop_by_default():
    s = Settings()
    assert (s.fragments, s.unparsed) == ("drop", "drop")
    assert s.to_kernel().pass_unjudged == 0


@pytest.mark.parametrize("fragments, unparsed, bits", [
    ("drop", "drop", 0),
    ("pass", "drop", shared.PASS_FRAGMENTS),
    ("drop", "pass", shared.PASS_UNPARSED),
    ("pass", "pass", shared.PASS_FRAGMENTS | shared.PASS_UNPARSED),
])
def test_pass_bits_round_trip(fragments, unparsed, bits):
    s = Settings(fragments=fragments, unparsed=unparsed)
    c = s.to_kernel()
    assert c.pass_unjudged == bits
    assert Settings.from_kernel(c) == s


def test_set_from_text():
    s = Settings().with_value("fragments", " PASS ")
    assert s.fragments == "pass" and s.unparsed == "drop"
    assert {"fragments", "unparsed"} <= set(SETTING_KEYS)


@pytest.mark.parametrize("key", ["fragments", "unparsed"])
def test_bad_value_names_the_key(key):
    with pytest.raises(SettingError) as e:
        Settings().with_value(key, "maybe")
    assert str(e.value) == f"{key}: 'maybe' is not one of drop, pass"
