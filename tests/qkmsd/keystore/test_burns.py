"""Burns kept for a neighbour (``KeyStore.keep_burns``): durable, bounded, latest kept."""

from __future__ import annotations

from pathlib import Path

from qkmsd.keystore import BURNS_KEPT, KeyStore, Segment

from .keystore_support import LINK, FakeClock


def test_kept_burns_survive_close_and_reopen_in_the_order_kept(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    burns = [Segment(7, 0, 64), Segment(3, 128, 32), Segment(7, 64, 64)]
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        s.keep_burns(LINK, burns[:2])
        s.keep_burns(LINK, burns[2:])
        s.keep_burns(LINK, burns[:1])  # kept once
        s.keep_burns("other~link", [Segment(1, 0, 8)])
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert s.kept_burns(LINK) == burns
        assert s.kept_burns("other~link") == [Segment(1, 0, 8)]
        assert s.kept_burns("no~link") == []


def test_only_the_latest_burns_are_kept_per_link(store: KeyStore) -> None:
    store.keep_burns(LINK, [Segment(i, 0, 16) for i in range(BURNS_KEPT)])
    store.keep_burns(LINK, [Segment(BURNS_KEPT + i, 0, 16) for i in range(3)])
    kept = store.kept_burns(LINK)
    assert len(kept) == BURNS_KEPT
    assert kept[0] == Segment(3, 0, 16) and kept[-1] == Segment(BURNS_KEPT + 2, 0, 16)
