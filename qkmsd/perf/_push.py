"""Pushing performance samples to a collector: JSON over mutual TLS (``[perf] report_url``).

The body is ``{"node": ID, "samples": [[at, resource, metric, value], ...]}``; any 2xx
answer acknowledges it.  The collector's certificate is checked against the network CA
and the URL's host name; the node shows its own certificate.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import msgspec

from ..errors import QkmsError
from ..http._client import HttpClientError, post
from ._history import Sample


class PushError(QkmsError):
    """Samples could not be pushed to the collector; the message says why."""


class PerfReport(msgspec.Struct, frozen=True):
    node: str
    samples: Sequence[Sample]


class Pusher:
    """Posts samples to ``url`` with the node's client certificate."""

    def __init__(self, url: str, *, node_id: str, ssl_context: ssl.SSLContext) -> None:
        self.url = url
        self._node_id = node_id
        self._ctx = ssl_context

    async def push(self, samples: Sequence[Sample]) -> None:
        body = msgspec.json.encode(PerfReport(self._node_id, samples))
        try:
            status = await post(
                self.url, body, ssl_context=self._ctx, content_type="application/json"
            )
        except HttpClientError as exc:
            raise PushError(str(exc)) from None
        if not 200 <= status < 300:
            raise PushError(f"{self.url} answered {status}")
