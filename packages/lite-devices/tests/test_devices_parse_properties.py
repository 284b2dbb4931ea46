"""Property tests of the devices parser (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lite_devices import DeviceError, DeviceSelection, parse_devices
from lite_devices._parse import select_indices

ACCELERATORS = st.sampled_from(["cuda", "mps", "xla"])


@st.composite
def count_and_indices(draw: st.DrawFn) -> tuple[int, list[int]]:
    count = draw(st.integers(1, 16))
    return count, draw(st.lists(st.integers(0, count - 1), min_size=1, unique=True))


@given(count_and_indices(), ACCELERATORS)
def test_distinct_in_range_lists_round_trip(case, accelerator):
    count, indices = case
    sel = parse_devices(indices, accelerator, device_counts={accelerator: count})
    assert sel.indices == tuple(indices)
    assert [d.index for d in sel.devices] == indices
    assert {d.type for d in sel.devices} == {accelerator}
    # the string spelling selects the same devices ("3," is the list [3]; "3" would be three devices)
    text = ", ".join(map(str, indices)) + ("," if len(indices) == 1 else "")
    assert parse_devices(text, accelerator, device_counts={accelerator: count}) == sel


@given(count_and_indices())
def test_a_repeated_index_is_rejected(case):
    count, indices = case
    with pytest.raises(DeviceError, match="more than once"):
        select_indices([*indices, indices[0]], "cuda", count)


@given(st.integers(1, 16), st.integers(-1000, 1000))
def test_int_selects_the_first_n_or_fails(count, n):
    if n == -1 or 1 <= n <= count:
        expected = tuple(range(count if n == -1 else n))
        assert select_indices(n, "cuda", count) == expected
        assert select_indices(str(n), "cuda", count) == expected
    else:
        with pytest.raises(DeviceError):
            select_indices(n, "cuda", count)


@given(st.integers(0, 64))
def test_cpu_int_is_a_number_of_processes(n):
    assert select_indices(n, "cpu", 1) == tuple(range(max(n, 1)))


_VALID_STRING = re.compile(
    r"\s*(auto|[+-]?[0-9]+|([+-]?[0-9]+\s*,\s*)*[+-]?[0-9]+\s*,?|[+-]?[0-9]+\s*,)\s*", re.I
)


@given(st.text(), st.sampled_from(["cpu", "cuda", "auto"]))
def test_any_string_parses_or_raises_device_error(text, accelerator):
    try:
        sel = parse_devices(text, accelerator, device_counts={"cuda": 4})
    except DeviceError:
        return
    assert isinstance(sel, DeviceSelection)
    assert _VALID_STRING.fullmatch(text)


@given(st.text().filter(lambda t: not _VALID_STRING.fullmatch(t)), st.sampled_from(["cpu", "cuda", "xla"]))
def test_garbage_strings_raise_device_error(text, accelerator):
    with pytest.raises(DeviceError, match="Accepted strings"):
        parse_devices(text, accelerator, device_counts={"cuda": 4, "xla": 8})


@given(
    st.one_of(
        st.booleans(),
        st.floats(),
        st.binary(),
        st.dictionaries(st.integers(), st.integers()),
        st.lists(st.one_of(st.booleans(), st.floats(), st.text()), min_size=1),
    )
)
def test_other_types_raise_device_error(value):
    with pytest.raises(DeviceError):
        parse_devices(value, "cuda", device_counts={"cuda": 4})
