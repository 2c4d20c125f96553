"""Which dead letters an operator's replay names (storage/dead_letters.Selection): exactly one
of seqs, entity or all, and seqs the store can hold (1..2^64-1, its keys are 8-byte unsigned
numbers), refused with BadRequest naming the problem before anything reaches the queue."""

from __future__ import annotations

import uuid

import pytest

from edge_sync.errors import BadRequest
from edge_sync.storage.dead_letters import MAX_SEQ, Selection

SEQ_RANGE = "seqs: integers from 1 to 18446744073709551615 only"


def test_the_largest_seq_is_the_largest_8_byte_key() -> None:
    assert MAX_SEQ == 2**64 - 1
    assert Selection(seqs=(1, MAX_SEQ)).seqs == (1, MAX_SEQ)
    assert Selection.from_json({"seqs": [MAX_SEQ]}) == Selection(seqs=(MAX_SEQ,))


@pytest.mark.parametrize("seqs", [
    [2**64], [1, 2**64], [10**30], [0], [-1], [True], [1.0], ["1"], [None],
], ids=["2^64", "one-of-two", "10^30", "zero", "negative", "bool", "float", "string", "null"])
def test_a_seq_outside_1_to_2_64_minus_1_is_refused(seqs: list[object]) -> None:
    with pytest.raises(BadRequest) as refused:
        Selection.from_json({"seqs": seqs})
    assert str(refused.value) == SEQ_RANGE
    with pytest.raises(BadRequest) as refused:
        Selection(seqs=tuple(seqs))  # type: ignore[arg-type]
    assert str(refused.value) == SEQ_RANGE


@pytest.mark.parametrize(("body", "message"), [
    ({"seqs": []}, "seqs: at least one seq"),
    ({"seqs": 5}, "seqs: a list of positive integers"),
    ({"all": False}, "all: must be true"),
    ({"entity": "nope"}, "entity: 'nope' is not a UUID"),
    ({"seqs": [1], "all": True}, 'expected one of {"seqs": [n, ...]}, {"entity": "<uuid>"}, '
                                 '{"all": true}'),
], ids=["no-seqs", "seqs-not-a-list", "all-false", "entity-not-uuid", "two-kinds"])
def test_other_malformed_selections_are_refused(body: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        Selection.from_json(body)
    assert str(refused.value) == message


def test_entity_and_all() -> None:
    entity = uuid.UUID(int=3)
    assert Selection.from_json({"entity": str(entity)}).entity == entity
    assert Selection.from_json({"all": True}).all is True
