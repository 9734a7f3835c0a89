"""LeaseHolder.parse: our own leader-key JSON, and anything else something might have written."""

from __future__ import annotations

import json

import pytest

from leader import LeaseHolder

OURS = {
    "replica_id": "web-1",
    "host": "node-a",
    "pid": 4242,
    "fencing_token": 1795886365087,
    "acquired_at": "2026-01-01T00:00:00.000+00:00",
}


@pytest.mark.parametrize("encode", [json.dumps, lambda d: json.dumps(d).encode()])
def test_our_own_value_parses(encode: object) -> None:
    raw = encode(OURS)  # type: ignore[operator]
    holder = LeaseHolder.parse(raw)
    assert not holder.foreign
    assert (holder.replica_id, holder.host, holder.pid) == ("web-1", "node-a", 4242)
    assert holder.fencing_token == 1795886365087
    assert holder.acquired_at == OURS["acquired_at"]
    assert holder.raw == json.dumps(OURS)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "locked",
        "<hash>",
        "12345",
        '"a string"',
        "[1, 2, 3]",
        "null",
        "{}",
        json.dumps({k: v for k, v in OURS.items() if k != "fencing_token"}),
        json.dumps({k: v for k, v in OURS.items() if k != "replica_id"}),
        json.dumps(OURS | {"fencing_token": "12"}),
        json.dumps(OURS | {"fencing_token": 12.0}),
        json.dumps(OURS | {"fencing_token": True}),
        json.dumps(OURS | {"fencing_token": None}),
        json.dumps(OURS | {"pid": "not-a-pid"}),
        json.dumps(OURS | {"pid": None}),
        "[" * 100_000 + "]" * 100_000,  # deep enough to exhaust the JSON parser's recursion
        b"\xff\xfe\x00garbage",
    ],
)
def test_anything_else_is_a_foreign_holder(raw: str | bytes) -> None:
    holder = LeaseHolder.parse(raw)
    assert holder.foreign
    assert holder.fencing_token is None
    assert isinstance(holder.raw, str)


def test_missing_optional_fields_get_defaults() -> None:
    holder = LeaseHolder.parse(json.dumps({"replica_id": 7, "fencing_token": 3}))
    assert not holder.foreign
    assert (holder.replica_id, holder.host, holder.pid, holder.acquired_at) == ("7", "", 0, "")
