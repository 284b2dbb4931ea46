"""move_to_device over every collection kind.

The target is the ``meta`` device, which every torch build has, so tensors really change
device here without a GPU; the CUDA-only ``non_blocking`` rule is observed through a
module that records what its ``.to`` received.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict, namedtuple
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from lite_devices import move_to_device

META = torch.device("meta")


def on_meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device == META


class Pair(NamedTuple):
    a: torch.Tensor
    b: Any


PlainPair = namedtuple("PlainPair", ["a", "b"])


class TupleSub(tuple):
    pass


class ListSub(list):
    pass


@dataclasses.dataclass
class Batch:
    x: torch.Tensor
    label: str = "l"


@dataclasses.dataclass(frozen=True)
class FrozenBatch:
    x: torch.Tensor
    nested: dict
    derived: torch.Tensor = dataclasses.field(init=False)
    never_set: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "derived", self.x + 1)


@dataclasses.dataclass(frozen=True, slots=True)
class SlotBatch:
    x: torch.Tensor


class HasTo:
    """A user type with its own transfer."""

    def __init__(self) -> None:
        self.moved_to: torch.device | None = None

    def to(self, device: torch.device) -> HasTo:
        out = HasTo()
        out.moved_to = device
        return out


class InPlaceTo:
    def __init__(self) -> None:
        self.moved_to: torch.device | None = None

    def to(self, device: torch.device) -> None:
        self.moved_to = device


def test_tensor_on_same_device_is_returned_as_is():
    t = torch.ones(3)
    assert move_to_device(t, "cpu") is t
    assert move_to_device(t, torch.device("cpu")) is t


def test_tensor_is_moved():
    t = torch.ones(3)
    out = move_to_device(t, "meta")
    assert on_meta(out)
    assert t.device.type == "cpu"  # the input is untouched


def test_module_is_moved_in_place_and_returned():
    m = nn.Linear(2, 2)
    assert move_to_device(m, "meta") is m
    assert m.weight.device == META


def test_dict_kinds_keep_their_type():
    od = OrderedDict([("b", torch.ones(1)), ("a", torch.ones(1))])
    dd: defaultdict[str, list] = defaultdict(list, {"x": [torch.ones(1)]})
    proxy = MappingProxyType({"t": torch.ones(1)})
    out_od, out_dd, out_proxy = move_to_device((od, dd, proxy), META)
    assert type(out_od) is OrderedDict and list(out_od) == ["b", "a"]
    assert all(on_meta(v) for v in out_od.values())
    assert type(out_dd) is defaultdict and out_dd.default_factory is list
    assert on_meta(out_dd["x"][0])
    assert out_dd["new"] == []  # the factory still works
    assert type(out_proxy) is MappingProxyType and on_meta(out_proxy["t"])
    assert od["a"].device.type == "cpu" and "new" not in dd  # inputs untouched


def test_sequences_keep_their_type():
    data = {
        "list": [torch.ones(1), 1],
        "tuple": (torch.ones(1), "s"),
        "named": Pair(torch.ones(1), [torch.ones(1)]),
        "plain_named": PlainPair(torch.ones(1), None),
        "tuple_sub": TupleSub((torch.ones(1),)),
        "list_sub": ListSub([torch.ones(1)]),
    }
    out = move_to_device(data, META)
    assert type(out) is dict
    assert type(out["list"]) is list and on_meta(out["list"][0]) and out["list"][1] == 1
    assert type(out["tuple"]) is tuple and on_meta(out["tuple"][0]) and out["tuple"][1] == "s"
    assert type(out["named"]) is Pair and on_meta(out["named"].a) and on_meta(out["named"].b[0])
    assert type(out["plain_named"]) is PlainPair and on_meta(out["plain_named"].a)
    assert out["plain_named"].b is None
    assert type(out["tuple_sub"]) is TupleSub and on_meta(out["tuple_sub"][0])
    assert type(out["list_sub"]) is ListSub and on_meta(out["list_sub"][0])
    assert data["list"][0].device.type == "cpu"


def test_dataclass():
    b = Batch(torch.ones(2))
    out = move_to_device(b, META)
    assert type(out) is Batch and out is not b
    assert on_meta(out.x) and out.label == "l"
    assert b.x.device.type == "cpu"


def test_frozen_dataclass_with_init_false_fields():
    b = FrozenBatch(torch.ones(2), {"y": torch.zeros(1)})
    out = move_to_device(b, META)
    assert type(out) is FrozenBatch
    assert on_meta(out.x) and on_meta(out.nested["y"]) and on_meta(out.derived)
    assert not hasattr(out, "never_set")
    assert b.derived.device.type == "cpu"


def test_slotted_frozen_dataclass():
    out = move_to_device(SlotBatch(torch.ones(1)), META)
    assert type(out) is SlotBatch and on_meta(out.x)


def test_objects_with_to():
    has_to, in_place = HasTo(), InPlaceTo()
    out = move_to_device([has_to, in_place], META)
    assert type(out[0]) is HasTo and out[0] is not has_to and out[0].moved_to == META
    assert out[1] is in_place and in_place.moved_to == META


@pytest.mark.parametrize(
    "leaf",
    ["text", b"bytes", 3, 2.5, None, True, np.ones(2), {1, 2}, HasTo, object()],
    ids=lambda v: type(v).__name__,
)
def test_other_leaves_are_untouched(leaf):
    assert move_to_device(leaf, META) is leaf
    assert move_to_device([leaf], META)[0] is leaf


class RecordingModule(nn.Module):
    """Records the arguments of ``.to`` instead of moving (lets the CUDA rule run without CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def to(self, *args: Any, **kwargs: Any) -> RecordingModule:  # type: ignore[override]
        self.calls.append((args, kwargs))
        return self


@pytest.mark.parametrize(
    ("device", "non_blocking", "expected"),
    [
        ("cuda", True, True),
        (torch.device("cuda", 1), True, True),
        ("cuda", False, False),
        ("meta", True, False),
        ("cpu", True, False),
        ("mps", True, False),
    ],
)
def test_non_blocking_only_for_cuda(device, non_blocking, expected):
    m = RecordingModule()
    assert move_to_device({"m": m}, device, non_blocking=non_blocking)["m"] is m
    assert m.calls == [((torch.device(device),), {"non_blocking": expected})]
