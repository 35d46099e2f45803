"""Helpers for trio's strict exception groups."""

from __future__ import annotations

import trio


def collapse(exc: BaseException) -> BaseException:
    """The single exception inside nested groups (``Cancelled`` aside), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if len(leaves) != 1:
            return exc
        exc = leaves[0]
    return exc
