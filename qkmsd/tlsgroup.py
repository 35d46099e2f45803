"""The key exchange group of a TLS handshake, read from the server's handshake messages.

Python reads the group a handshake agreed on only from 3.15 (``SSLObject.group()``).  The
server's messages say it on every version: in TLS 1.3 the ServerHello's ``key_share``
extension (RFC 8446, 4.2.8; a HelloRetryRequest's names the group it asks for), in
TLS 1.2 an ECDHE ServerKeyExchange's named curve (RFC 8422, 5.4).  ``HelloReader`` watches
a context's messages through ``SSLContext._msg_callback`` (a server's context sees them
written, a client's read) and keeps each connection's group until asked;
``handshake_group`` is the sans-IO part: one message's bytes in, a group code or ``None``
out, never an exception.

``TlsContexts`` is what a server or a client uses: a watched context for handshakes, an
unwatched twin that each connection moves to after its handshake, and the group that
handshake agreed on; ``negotiated_group`` asks Python first, where it can tell.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Callable
from typing import Any, Final

import trio

__all__ = [
    "GROUP_NAMES",
    "HelloReader",
    "TlsContexts",
    "group_name",
    "handshake_group",
    "negotiated_group",
]

_HANDSHAKE: Final = 22  # TLS record content type
_SERVER_HELLO: Final = 2
_SERVER_KEY_EXCHANGE: Final = 12
_KEY_SHARE: Final = 51  # extension type
_NAMED_CURVE: Final = 3  # ECCurveType

# TLS Supported Groups (IANA), named as OpenSSL names them (and so Python 3.15's group()).
GROUP_NAMES: Final = {
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
    0x001A: "brainpoolP256r1",
    0x001B: "brainpoolP384r1",
    0x001C: "brainpoolP512r1",
    0x001D: "x25519",
    0x001E: "x448",
    0x001F: "brainpoolP256r1tls13",
    0x0020: "brainpoolP384r1tls13",
    0x0021: "brainpoolP512r1tls13",
    0x0100: "ffdhe2048",
    0x0101: "ffdhe3072",
    0x0102: "ffdhe4096",
    0x0103: "ffdhe6144",
    0x0104: "ffdhe8192",
    0x0200: "MLKEM512",
    0x0201: "MLKEM768",
    0x0202: "MLKEM1024",
    0x11EB: "SecP256r1MLKEM768",
    0x11EC: "X25519MLKEM768",
    0x11ED: "SecP384r1MLKEM1024",
}


def group_name(code: int) -> str:
    """OpenSSL's name for a group code; ``0x....`` for one it has no name for."""
    return GROUP_NAMES.get(code) or f"0x{code:04x}"


def handshake_group(message: bytes) -> int | None:
    """The group a ServerHello or ServerKeyExchange names; else ``None``.

    ``message`` is one handshake message with its 4-byte header.  ``None`` for other
    messages, for a ServerHello without a key share (TLS 1.2, or a resumption without
    key exchange), for a ServerKeyExchange of another kind (finite-field DHE), and for
    bytes that are not a whole message.
    """
    if len(message) < 4 or int.from_bytes(message[1:4], "big") != len(message) - 4:
        return None
    kind = message[0]
    if kind == _SERVER_KEY_EXCHANGE:
        if len(message) >= 7 and message[4] == _NAMED_CURVE:
            return int.from_bytes(message[5:7], "big")
        return None
    if kind != _SERVER_HELLO:
        return None
    # legacy_version (2), random (32), then legacy_session_id (1-byte length).
    at = 4 + 2 + 32
    if at >= len(message):
        return None
    at += 1 + message[at] + 2 + 1  # the session ID, cipher_suite, legacy_compression_method
    if at + 2 > len(message):
        return None
    end = at + 2 + int.from_bytes(message[at : at + 2], "big")
    if end != len(message):
        return None
    at += 2
    while at + 4 <= end:
        kind = int.from_bytes(message[at : at + 2], "big")
        size = int.from_bytes(message[at + 2 : at + 4], "big")
        at += 4
        if at + size > end:
            return None
        if kind == _KEY_SHARE:
            return int.from_bytes(message[at : at + 2], "big") if size >= 2 else None
        at += size
    return None


class HelloReader:
    """Reads the key exchange group of each handshake on the contexts it watches.

    ``watch(context)`` before the context's first handshake; after a connection's
    handshake, ``pop(ssl_object)`` gives the group that handshake agreed on.  While a
    context is watched, OpenSSL calls back into Python for every TLS record, handshake or
    not, a cost on every request and response; so each connection moves to a twin context
    without the watch once its handshake is done (``ssl_object.context = twin``).
    """

    def __init__(self) -> None:
        self._groups: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    def watch(self, context: ssl.SSLContext) -> bool:
        """Watch ``context``'s handshakes; False if this Python cannot."""
        try:
            # A private attribute of ssl.SSLContext since Python 3.8 (its debug hook).
            context._msg_callback = self._message  # type: ignore[attr-defined]
        except (AttributeError, TypeError, NotImplementedError):
            return False
        return True

    def pop(self, ssl_object: object) -> int | None:
        """The group of ``ssl_object``'s handshake, forgotten once read; or ``None``."""
        return self._groups.pop(ssl_object, None)

    def _message(
        self,
        conn: object,
        direction: str,
        version: object,
        content_type: object,
        msg_type: object,
        data: bytes,
    ) -> None:
        # Called by OpenSSL in the middle of a handshake: anything raised here would fail
        # the handshake, so nothing may be.  Only a server writes a ServerHello or a
        # ServerKeyExchange, and only a client reads one: either way it is this
        # connection's, so the direction does not matter.
        try:
            if content_type != _HANDSHAKE:
                return
            if msg_type != _SERVER_HELLO and msg_type != _SERVER_KEY_EXCHANGE:
                return
            group = handshake_group(bytes(data))
            if group is not None:
                self._groups[conn] = group
        except Exception:  # noqa: BLE001, S110 - a group we cannot read is "unknown"
            pass


def negotiated_group(stream: trio.SSLStream[Any], reader: HelloReader | None = None) -> str | None:
    """The key exchange group ``stream``'s handshake agreed on, or ``None`` if unknown.

    Python 3.15 and newer say it (``ssl.SSLObject.group()``; ``trio.SSLStream`` does not
    forward it, so it is asked of the stream's SSL object).  Before 3.15, ``reader`` (if
    it watched the stream's context) read it from the server's handshake messages.
    """
    ssl_object = getattr(stream, "_ssl_object", None)
    group = getattr(ssl_object, "group", None)
    if callable(group):
        try:
            name = group()
        except (ssl.SSLError, ValueError):
            name = None
        if isinstance(name, str) and name:
            return name
    code = reader.pop(ssl_object) if reader is not None and ssl_object is not None else None
    return None if code is None else group_name(code)


class TlsContexts:
    """The TLS contexts of one side of a protocol: one for handshakes, one for after them.

    Given a context, that one serves throughout.  Given a function that makes contexts,
    and a Python that cannot name a handshake's group (before 3.15), the handshake context
    is watched by a ``HelloReader`` and each connection then moves to a second, unwatched
    one (see ``HelloReader`` for why).  Servers and clients alike: open each connection
    with ``handshake``, and call ``after_handshake`` once its handshake is done.
    """

    def __init__(self, source: ssl.SSLContext | Callable[[], ssl.SSLContext]) -> None:
        self.reader: HelloReader | None = None
        self._after: ssl.SSLContext | None = None
        if isinstance(source, ssl.SSLContext):
            self.handshake = source
            return
        self.handshake = source()
        if hasattr(ssl.SSLObject, "group"):
            return  # Python 3.15 or newer reads the group itself
        reader = HelloReader()
        if reader.watch(self.handshake):
            self.reader, self._after = reader, source()

    def adopt(self, fresh: TlsContexts) -> None:
        """Use ``fresh``'s contexts from now on (a reload): new connections handshake with
        them; connections already open keep the contexts they have."""
        self.handshake, self.reader, self._after = fresh.handshake, fresh.reader, fresh._after

    def after_handshake(self, stream: trio.SSLStream[Any]) -> str | None:
        """The group ``stream``'s handshake agreed on (``None`` if unknown); moves it on."""
        group = negotiated_group(stream, self.reader)
        if self._after is not None:
            try:
                stream.context = self._after
            except (ssl.SSLError, TypeError, ValueError):
                pass  # the connection keeps the watched context: slower, nothing worse
        return group
