"""The peer session: Hello first, from the authenticated node, with a shared version."""

from __future__ import annotations

import pytest

from protocol import (
    NEED_DATA,
    Error,
    ErrorCode,
    Hello,
    KeyAnnounce,
    LocalProtocolError,
    PeerSession,
    Ping,
    RemoteProtocolError,
    SessionState,
)


def pair() -> tuple[PeerSession, PeerSession]:
    a = PeerSession(local_node="KME_A", expected_peer="KME_B")
    b = PeerSession(local_node="KME_B", expected_peer="KME_A")
    return a, b


def open_pair() -> tuple[PeerSession, PeerSession]:
    a, b = pair()
    b.receive_data(a.hello())
    a.receive_data(b.hello())
    assert isinstance(a.next_event(), Hello)
    assert isinstance(b.next_event(), Hello)
    return a, b


def test_session_opens_after_both_hellos_and_agrees_on_a_version() -> None:
    a, b = open_pair()
    assert a.state is b.state is SessionState.OPEN
    assert a.version == b.version == 1


def test_messages_flow_once_open_split_a_byte_at_a_time() -> None:
    a, b = open_pair()
    data = a.send(KeyAnnounce(link_id="A~B", block_ids=[3, 4])) + a.send(Ping(nonce=9))
    events = []
    for i in range(len(data)):
        b.receive_data(data[i : i + 1])
        while (event := b.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [KeyAnnounce(link_id="A~B", block_ids=[3, 4]), Ping(nonce=9)]


def test_hello_from_another_node_than_the_certificate_is_refused() -> None:
    a = PeerSession(local_node="KME_A", expected_peer="KME_B")
    mallory = PeerSession(local_node="KME_C", expected_peer="KME_A")
    a.receive_data(mallory.hello())
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert info.value.code is ErrorCode.WRONG_PEER
    assert a.state is SessionState.CLOSED


def test_no_common_version_is_refused() -> None:
    a = PeerSession(local_node="KME_A", expected_peer="KME_B", versions=(1,))
    b = PeerSession(local_node="KME_B", expected_peer="KME_A", versions=(2, 3))
    a.receive_data(b.hello())
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_a_message_before_hello_is_a_violation() -> None:
    a, b = pair()
    b.state = SessionState.OPEN  # b misbehaves: skips its hello
    a.receive_data(b.send(Ping(nonce=1)))
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert "'ping' not allowed in state await-hello" in info.value.message
    assert a.state is SessionState.CLOSED


def test_a_second_hello_is_a_violation() -> None:
    a, b = open_pair()
    a.receive_data(b.hello())
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_an_unexpected_message_error_names_the_state_it_arrived_in() -> None:
    # The session closes on a violation; the error must still report where it happened.
    a, b = open_pair()
    a.receive_data(b.hello())
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert "'hello' not allowed in state open" in info.value.message
    assert "closed" not in info.value.message
    assert a.state is SessionState.CLOSED


def test_we_cannot_send_before_the_session_is_open() -> None:
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        a.send(Ping(nonce=1))


def test_an_error_closes_the_session_at_both_ends() -> None:
    a, b = open_pair()
    b.receive_data(a.send(Error(code="internal", message="bye")))
    assert a.state is SessionState.CLOSED
    assert isinstance(b.next_event(), Error)
    assert b.state is SessionState.CLOSED
