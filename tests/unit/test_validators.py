"""edge_sync/validators.py: the checks the edge and the cloud share, and that both sides count a
name the same way (UTF-8 bytes) and check int64 with the same range."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_sync.cloud.service import CloudService, check_attribute_values
from edge_sync.cloud.store import CloudStore
from edge_sync.errors import BadRequest
from edge_sync.validators import (
    INT64_MAX,
    INT64_MIN,
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    is_int64,
    is_storable_int,
    key_fits,
    text_fits,
    utf8_length,
)

LONGEST = "名" * 85  # 255 bytes of UTF-8 in 85 characters


def test_utf8_length_counts_bytes_and_refuses_lone_surrogates() -> None:
    assert utf8_length("aé名") == 6
    assert utf8_length("\ud800") is None


@pytest.mark.parametrize(("value", "ok"), [
    ("d", True), (LONGEST, True), (LONGEST + "x", False), ("", False), ("   ", False),
    ("\ud800", False), (None, False), (5, False),
])
def test_text_fits(value: object, ok: bool) -> None:
    assert text_fits(value, MAX_NAME_BYTES) is ok


def test_text_fits_may_allow_empty_but_not_blank() -> None:
    assert text_fits("", 10, allow_empty=True)
    assert not text_fits("  ", 10, allow_empty=True)
    assert not text_fits("x" * 11, 10, allow_empty=True)


def test_key_fits_counts_bytes() -> None:
    assert key_fits("k" * MAX_KEY_BYTES) and key_fits(" ")
    assert not key_fits("é" * 128) and not key_fits("") and not key_fits(3)


def test_one_int64_range() -> None:
    assert (INT64_MIN, INT64_MAX) == (-(2**63), 2**63 - 1)
    assert is_int64(INT64_MIN) and is_int64(INT64_MAX) and is_int64(0)
    assert not is_int64(INT64_MAX + 1) and not is_int64(INT64_MIN - 1)
    assert not is_int64(True) and not is_int64(1.0)


def test_storable_ints_reach_uint64() -> None:
    assert is_storable_int(2**64 - 1) and is_storable_int(INT64_MIN)
    assert not is_storable_int(2**64) and not is_storable_int(INT64_MIN - 1)


def test_cloud_checks_attribute_integers_with_the_int64_range() -> None:
    assert check_attribute_values({"a": INT64_MAX}) == {"a": INT64_MAX}
    with pytest.raises(BadRequest, match="64 bits"):
        check_attribute_values({"a": INT64_MAX + 1})
    with pytest.raises(BadRequest, match="bytes of UTF-8"):
        check_attribute_values({"é" * 128: 1})


def test_cloud_device_names_are_counted_in_utf8_bytes_like_the_edge(tmp_path: Path) -> None:
    store = CloudStore(tmp_path / "cloud", max_size_mb=64)
    try:
        service = CloudService(store)
        routing_key = service.create_edge("e")[0].routing_key
        assert service.create_device(routing_key, LONGEST) is not None
        for too_long in (LONGEST + "x", "名" * 86):
            with pytest.raises(BadRequest, match="name: expected text of 1 to 255 bytes"):
                service.create_device(routing_key, too_long)
    finally:
        store.close()
