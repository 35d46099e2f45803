"""Sifting: Alice and Bob announce bases and keep the detections where they agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from ._simulate import DetectionRecord

U8 = npt.NDArray[np.uint8]


@dataclasses.dataclass(frozen=True, slots=True)
class SiftedKey:
    """Detections with matching bases; intensity and basis are public, bits secret."""

    intensity: U8 = dataclasses.field(repr=False)
    basis: U8 = dataclasses.field(repr=False)
    alice: U8 = dataclasses.field(repr=False)
    bob: U8 = dataclasses.field(repr=False)

    @property
    def size(self) -> int:
        return int(self.basis.size)


def sift(record: DetectionRecord) -> SiftedKey:
    """Keep the detections where Bob measured in Alice's basis."""
    keep = record.alice_basis == record.bob_basis
    return SiftedKey(
        intensity=record.intensity[keep],
        basis=record.alice_basis[keep],
        alice=record.alice_bit[keep],
        bob=record.bob_bit[keep],
    )
