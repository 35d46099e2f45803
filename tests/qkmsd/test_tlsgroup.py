"""Reading the key exchange group from the server's TLS handshake messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qkmsd.tlsgroup import HelloReader, group_name, handshake_group

X25519, X25519MLKEM768, SECP384R1 = 0x001D, 0x11EC, 0x0018
HANDSHAKE = 22


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _message(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def _extension(kind: int, data: bytes) -> bytes:
    return _u16(kind) + _u16(len(data)) + data


def server_hello(*extensions: bytes, session_id: bytes = bytes(32)) -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id + b"\x13\x01" + b"\0"
    if extensions:
        joined = b"".join(extensions)
        body += _u16(len(joined)) + joined
    return _message(2, body)


def supported_versions_tls13() -> bytes:
    return _extension(43, b"\x03\x04")


def key_share(group: int, key: bytes) -> bytes:
    return _extension(51, _u16(group) + _u16(len(key)) + key)


def test_a_tls13_server_hello_names_the_group_of_its_key_share() -> None:
    hello = server_hello(supported_versions_tls13(), key_share(X25519, bytes(32)))
    assert handshake_group(hello) == X25519


def test_the_hybrid_group_s_long_key_share_is_read_as_well() -> None:
    hello = server_hello(key_share(X25519MLKEM768, bytes(1120)), supported_versions_tls13())
    assert handshake_group(hello) == X25519MLKEM768


def test_a_hello_retry_request_names_the_group_it_asks_for() -> None:
    # A HelloRetryRequest is a ServerHello whose key_share holds only the selected group.
    hello = server_hello(supported_versions_tls13(), _extension(51, _u16(SECP384R1)))
    assert handshake_group(hello) == SECP384R1


def test_a_tls12_ecdhe_server_key_exchange_names_its_curve() -> None:
    params = b"\x03" + _u16(X25519) + b"\x20" + bytes(32) + b"\x04\x03" + _u16(2) + b"ss"
    assert handshake_group(_message(12, params)) == X25519


@pytest.mark.parametrize(
    "message",
    [
        server_hello(),  # TLS 1.2: no extensions at all
        server_hello(supported_versions_tls13()),  # no key share (a PSK-only resumption)
        server_hello(_extension(51, b"\x00")),  # a key share too short to hold a group
        _message(12, b"\x01" + bytes(10)),  # a ServerKeyExchange with explicit curve params
        _message(1, bytes(40)),  # a ClientHello
        server_hello(key_share(X25519, bytes(32)))[:-1],  # cut short
        server_hello(key_share(X25519, bytes(32))) + b"\0",  # one byte too many
        server_hello(key_share(X25519, bytes(32)), session_id=bytes(33))[:60],
        b"",
        b"\x02",
    ],
    ids=[
        "tls12-hello",
        "no-key-share",
        "short-key-share",
        "explicit-curve",
        "client-hello",
        "truncated",
        "trailing-byte",
        "torn",
        "empty",
        "header-only",
    ],
)
def test_messages_without_a_readable_group_give_none(message: bytes) -> None:
    assert handshake_group(message) is None


def test_an_extension_that_claims_more_bytes_than_the_message_has_gives_none() -> None:
    lying = _u16(51) + _u16(200) + _u16(X25519)
    body = b"\x03\x03" + bytes(32) + b"\0" + b"\x13\x01\0" + _u16(len(lying)) + lying
    assert handshake_group(_message(2, body)) is None


@given(st.binary(max_size=300))
def test_no_bytes_make_the_parser_raise(data: bytes) -> None:
    for message in (data, _message(2, data), _message(12, data)):
        group = handshake_group(message)
        assert group is None or 0 <= group <= 0xFFFF


def test_groups_are_named_as_openssl_names_them_and_unknown_ones_by_code() -> None:
    assert [group_name(g) for g in (X25519, X25519MLKEM768, 0x0017, 0x0100)] == [
        "x25519",
        "X25519MLKEM768",
        "secp256r1",
        "ffdhe2048",
    ]
    assert group_name(0xFE01) == "0xfe01"


class _Conn:
    """Stands in for an ``ssl.SSLObject``: the reader keys its groups by connection."""


def test_the_reader_keeps_the_group_of_each_connection_s_server_hello() -> None:
    reader = HelloReader()
    server, client, other = _Conn(), _Conn(), _Conn()
    hybrid = server_hello(key_share(X25519MLKEM768, bytes(1120)))
    classical = server_hello(key_share(X25519, bytes(32)))
    reader._message(server, "write", 0x304, HANDSHAKE, 2, hybrid)
    reader._message(client, "read", 0x304, HANDSHAKE, 2, classical)
    reader._message(other, "write", 0x304, 23, 2, classical)  # not a handshake record
    assert reader.pop(server) == X25519MLKEM768  # a server writes its hello
    assert reader.pop(client) == X25519  # a client reads it
    assert reader.pop(server) is None  # forgotten once read
    assert reader.pop(other) is None


def test_the_reader_never_raises_into_openssl() -> None:
    reader = HelloReader()
    conn = _Conn()
    # Not bytes at all: would fail the handshake if it raised.
    reader._message(conn, "write", 0x304, HANDSHAKE, 2, None)  # type: ignore[arg-type]
    reader._message(conn, "write", 0x304, HANDSHAKE, 2, b"\x02\xff")
    assert reader.pop(conn) is None


def test_a_connection_that_is_gone_leaves_nothing_behind() -> None:
    reader = HelloReader()
    conn = _Conn()
    reader._message(conn, "write", 0x304, HANDSHAKE, 2, server_hello(key_share(X25519, bytes(32))))
    del conn
    assert len(reader._groups) == 0
