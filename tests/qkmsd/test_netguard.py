"""The connection gate: caps per listener and per source, oldest pending shed first."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from qkmsd.netguard import Admission, ConnectionGate, GateLimits, wait_for_data


def gate(max_connections: int = 4, max_per_source: int | None = None) -> ConnectionGate:
    limits = GateLimits(max_connections, max_per_source or max_connections)
    return ConnectionGate("test", limits)


def admitted(g: ConnectionGate, source: str) -> Admission:
    admission = g.admit(source)
    assert admission is not None
    return admission


async def test_a_full_listener_sheds_its_oldest_pending_connection() -> None:
    g = gate(max_connections=3)
    first, second, third = (admitted(g, f"10.0.0.{i}") for i in range(3))
    fourth = admitted(g, "10.0.0.9")
    assert first.shed and first.scope.cancel_called
    assert not any(a.shed for a in (second, third, fourth))
    assert g.statistics().open == 3


async def test_the_per_source_cap_sheds_that_sources_oldest_pending_only() -> None:
    g = gate(max_connections=100, max_per_source=2)
    other = admitted(g, "10.0.0.2")
    mine = [admitted(g, "10.0.0.1") for _ in range(2)]
    newest = admitted(g, "10.0.0.1")
    assert mine[0].shed and not mine[1].shed and not newest.shed
    assert not other.shed  # older, but from another source


async def test_authenticated_connections_are_never_shed_and_a_full_gate_refuses() -> None:
    g = gate(max_connections=2)
    sessions = [admitted(g, f"10.0.0.{i}") for i in range(2)]
    for session in sessions:
        session.authenticated()
    assert g.admit("10.0.0.9") is None
    assert not any(s.shed or s.scope.cancel_called for s in sessions)
    assert g.statistics().totals["refused_listener_full"] == 1


async def test_an_authenticated_source_at_its_cap_is_refused_while_others_get_in() -> None:
    g = gate(max_connections=10, max_per_source=1)
    admitted(g, "10.0.0.1").authenticated()
    assert g.admit("10.0.0.1") is None
    assert g.admit("10.0.0.2") is not None
    assert g.statistics().totals["refused_source_full"] == 1


async def test_the_pending_shed_is_the_oldest_even_when_newer_ones_authenticated() -> None:
    g = gate(max_connections=3)
    a, b, c = (admitted(g, "10.0.0.1") for _ in range(3))
    a.authenticated()
    admitted(g, "10.0.0.1")
    assert (a.shed, b.shed, c.shed) == (False, True, False)


async def test_released_places_are_free_again_and_release_is_idempotent() -> None:
    g = gate(max_connections=2, max_per_source=2)
    a, b = admitted(g, "10.0.0.1"), admitted(g, "10.0.0.1")
    a.authenticated()
    a.release()
    a.release()
    b.release()
    s = g.statistics()
    assert (s.open, s.pending, s.sources) == (0, 0, 0)
    c, d = admitted(g, "10.0.0.1"), admitted(g, "10.0.0.1")
    assert not c.shed and not d.shed


def test_limits_need_a_per_source_cap_within_the_listener_cap() -> None:
    with pytest.raises(ValueError, match="max_per_source"):
        GateLimits(max_connections=10, max_per_source=11)


async def test_refusals_are_logged_as_one_line_of_counts_per_interval(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    g = ConnectionGate("api", GateLimits(1, 1), report_interval=10.0)
    with caplog.at_level(logging.INFO, logger="qkms.net"):
        async with trio.open_nursery() as nursery:
            await nursery.start(g.serve, [], _never_called)
            admitted(g, "10.0.0.1").authenticated()
            for _ in range(500):
                assert g.admit("10.0.0.1") is None
            for _ in range(7):
                g.note_refused("TLS CERTIFICATE_VERIFY_FAILED")
            await trio.sleep(10.5)
            lines = [r for r in caplog.records if r.getMessage() == "net.refused"]
            assert len(lines) == 1
            assert lines[0].__dict__["source_full"] == 500
            assert lines[0].__dict__["tls_certificate_verify_failed"] == 7
            assert lines[0].__dict__["total"] == 507
            await trio.sleep(60)  # nothing refused since: nothing more logged
            assert len([r for r in caplog.records if r.getMessage() == "net.refused"]) == 1
            nursery.cancel_scope.cancel()


async def _never_called(stream: trio.SocketStream, admission: Admission) -> None:
    raise AssertionError("no connection was accepted")


class _ExhaustedListener(trio.abc.Listener[trio.SocketStream]):
    """Accept fails with EMFILE ``failures`` times, then waits forever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def accept(self) -> trio.SocketStream:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.calls <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_out_of_descriptors_sheds_a_stranger_backs_off_and_logs_one_line(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    g = ConnectionGate("peer", GateLimits(100, 100), report_interval=10.0)
    strangers = [admitted(g, "10.0.0.1") for _ in range(3)]
    listener = _ExhaustedListener(failures=20)
    with caplog.at_level(logging.INFO, logger="qkms.net"):
        async with trio.open_nursery() as nursery:
            await nursery.start(g.serve, [listener], _never_called)
            await trio.sleep(1.0)
            early_calls = listener.calls
            await trio.sleep(30.0)
            nursery.cancel_scope.cancel()
    # Backing off (0.01 s doubling to 1 s): not a busy loop, and it keeps trying.
    assert early_calls < 10 and listener.calls == 21
    assert [s.shed for s in strangers] == [True, True, True]
    failed = [r for r in caplog.records if r.getMessage() == "net.accept_failed"]
    # ~14 s of failures: one line for each 10 s interval that had any.
    assert len(failed) == 2 and sum(r.__dict__["emfile"] for r in failed) == 20
    assert not any(r.exc_info for r in caplog.records)  # no tracebacks


# --- over real sockets -----------------------------------------------------------------------


async def _serve_waiting_for_data(
    g: ConnectionGate, nursery: trio.Nursery, authenticated: list[bytes]
) -> int:
    """A listener on 127.0.0.1 whose handler authenticates a client that sends b"auth"."""

    async def handler(stream: trio.SocketStream, admission: Admission) -> None:
        await wait_for_data(stream)
        data = await stream.receive_some(100)
        if data == b"auth":
            admission.authenticated()
            authenticated.append(data)
            await stream.send_all(b"welcome")
            while data := await stream.receive_some(100):
                await stream.send_all(data)  # an echo: proof the session is still served

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(g.serve, listeners, handler)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_over_tcp_idle_strangers_are_shed_oldest_first_and_a_client_gets_in() -> None:
    g = ConnectionGate("api", GateLimits(max_connections=8, max_per_source=8))
    authenticated: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve_waiting_for_data(g, nursery, authenticated)
            idle = []
            for _ in range(20):
                idle.append(await trio.open_tcp_stream("127.0.0.1", port))
                await trio.testing.wait_all_tasks_blocked()
            # The 12 oldest were shed (EOF); the 8 newest still hold their places.
            for stream in idle[:12]:
                assert await stream.receive_some(10) == b""
            assert g.statistics().open == 8
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"auth")
            assert await client.receive_some(10) == b"welcome"
            assert await idle[12].receive_some(10) == b""  # the oldest left made room
            assert authenticated == [b"auth"]
            # A flood cannot push out the authenticated client.
            for _ in range(20):
                idle.append(await trio.open_tcp_stream("127.0.0.1", port))
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"still here")
            assert await client.receive_some(100) == b"still here"
            assert g.statistics().open == 8
            for stream in [*idle, client]:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_over_tcp_a_refused_connection_is_closed_at_once() -> None:
    g = ConnectionGate("api", GateLimits(max_connections=1, max_per_source=1))
    authenticated: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve_waiting_for_data(g, nursery, authenticated)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"auth")
            assert await client.receive_some(10) == b"welcome"
            refused = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                assert await refused.receive_some(10) == b""
            except trio.BrokenResourceError:
                pass  # or reset: either way, closed
            assert g.statistics().totals["refused_source_full"] == 1
            await client.aclose()
            await refused.aclose()
            nursery.cancel_scope.cancel()


async def test_tls_state_is_built_for_at_most_max_handshakes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = ConnectionGate("api", GateLimits(10, 10, max_handshakes=2))
    first, second, third = (admitted(g, "10.0.0.1") for _ in range(3))
    await first.start_handshake()
    await second.start_handshake()
    with trio.move_on_after(5) as waited:
        await third.start_handshake()
    assert waited.cancelled_caught  # both slots taken
    first.authenticated()  # a finished handshake gives its slot back
    second.release()  # and so does a connection that ends mid-handshake
    await third.start_handshake()
    third.end_handshake()
    assert g.handshakes.borrowed_tokens == 0
