"""Key IDs are UUIDv7: valid UUIDs, unique, in creation order, random past the time."""

from __future__ import annotations

import time
import uuid

from protocol import KEY_ID_RE
from qkmsd.supply._ids import new_key_id


def test_a_key_id_is_a_lower_case_uuid_of_version_7() -> None:
    key_id = new_key_id()
    parsed = uuid.UUID(key_id)
    assert str(parsed) == key_id
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert KEY_ID_RE.fullmatch(key_id)  # the wire and the key store accept it


def test_a_key_id_starts_with_its_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    key_id = new_key_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(key_id).int >> 80 <= after


def test_key_ids_made_later_sort_later() -> None:
    first = new_key_id()
    time.sleep(0.002)
    assert new_key_id() > first


def test_key_ids_are_unique_and_random_past_the_timestamp() -> None:
    ids = [uuid.UUID(new_key_id()).int for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    # rand_a (bits 64-75) and rand_b (bits 0-61): each of those 74 bits takes both values.
    random_bits = ((1 << 76) - 1) & ~(0b11 << 62)
    ones = zeros = 0
    for value in ids:
        ones |= value
        zeros |= ~value
    assert ones & random_bits == random_bits
    assert zeros & random_bits == random_bits
