"""The per-pair stock: keys handed out once, oldest first, never with under half their
validity left; refills asked for only when the stock runs low."""

from __future__ import annotations

import uuid

from qkmsd.keystore import CutKey, Segment
from qkmsd.supply._stock import PairStock

VALIDITY = 100.0


def keys(n: int) -> list[CutKey]:
    return [CutKey(str(uuid.uuid4()), (Segment(1, 32 * i, 32),), bytes([i]) * 32) for i in range(n)]


def stocked(target: int, n: int, *, at: float = 0.0) -> tuple[PairStock, list[CutKey]]:
    stock = PairStock(target)
    added = keys(n)
    stock.add(added, expires_at=at + VALIDITY, validity_s=VALIDITY)
    return stock, added


def test_keys_go_out_oldest_first_and_once() -> None:
    stock, added = stocked(8, 5)
    assert stock.take(2, now=1.0) == added[:2]
    assert stock.take(3, now=1.0) == added[2:]
    assert len(stock) == 0
    assert stock.take(1, now=1.0) is None


def test_too_few_keys_take_nothing() -> None:
    stock, added = stocked(8, 3)
    assert stock.take(4, now=1.0) is None
    assert stock.take(3, now=1.0) == added


def test_a_key_with_less_than_half_its_validity_left_is_dropped_not_served() -> None:
    def two_batches() -> tuple[PairStock, list[CutKey], list[CutKey]]:
        stock, old, new = PairStock(8), keys(2), keys(2)
        stock.add(old, expires_at=VALIDITY, validity_s=VALIDITY)
        stock.add(new, expires_at=30 + VALIDITY, validity_s=VALIDITY)
        return stock, old, new

    stock, old, _ = two_batches()
    assert stock.take(2, now=VALIDITY / 2 - 1) == old  # just over half left: still served
    stock, _, new = two_batches()
    assert stock.take(1, now=VALIDITY / 2 + 1) == new[:1]
    assert stock.dropped == 2
    assert len(stock) == 1


def test_a_refill_is_wanted_up_to_the_target_once_half_is_gone() -> None:
    stock, _ = stocked(8, 8)
    assert stock.wanted(1.0, retry_after=1.0) == 0
    stock.take(4, now=1.0)
    assert stock.wanted(1.0, retry_after=1.0) == 4
    stock.take(3, now=1.0)
    assert stock.wanted(1.0, retry_after=1.0) == 7


def test_no_refill_while_one_runs_or_soon_after_one_failed() -> None:
    stock = PairStock(8)
    stock.refilling = True
    assert stock.wanted(10.0, retry_after=1.0) == 0
    assert stock.shortfall(10.0) == 8  # what the running refill itself goes on adding
    stock.refilling = False
    stock.failed_at = 10.0
    assert stock.wanted(10.5, retry_after=1.0) == 0
    assert stock.wanted(11.0, retry_after=1.0) == 8


def test_stock_repr_and_keys_never_show_key_bytes() -> None:
    stock, added = stocked(8, 1)
    assert added[0].key.hex() not in repr(stock._keys) + repr(added)


def test_keys_cut_at_an_older_key_size_are_dropped_not_served_at_the_wrong_size() -> None:
    stock, old = stocked(8, 3)  # 256-bit keys; the pair's key size then becomes 512
    bigger = [CutKey(str(uuid.uuid4()), (Segment(2, 64 * i, 64),), bytes(64)) for i in range(2)]
    stock.add(bigger, expires_at=VALIDITY, validity_s=VALIDITY)
    assert stock.take(1, now=1.0, size_bits=512) == bigger[:1]
    assert stock.dropped == 3 and len(stock) == 1
