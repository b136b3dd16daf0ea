"""
The transfer state machine, driven by a fake clock and fake UDP ports.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import weakref

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.content import BytesResponseData, FileNotFound
from tftpd_tx.options import Negotiated
from tftpd_tx.rtt import RoundTrip
from tftpd_tx.session import (
    GAP_WAIT,
    MAX_PAUSE,
    MIN_PAUSE,
    READ_AHEAD,
    READ_AHEAD_INTERVAL,
    ReadSession,
    backoff_schedule,
)
from tftpd_tx.stats import Outcome, SessionStats
from tftpd_tx.testing import FakeUDPReactor

PEER = ("192.0.2.7", 2000)
SCHEDULE = (1.0, 2.0, 4.0)


def data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", 3, block) + payload


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block)


def error(code: int, message: str = "") -> bytes:
    return wire.Error(code, message).encode()


class RecordingResponse(BytesResponseData):
    """
    Bytes that remember whether they were closed.
    """

    closed = False

    def close(self):
        self.closed = True
        super().close()


class DeferredResponse:
    """
    A response whose every read returns a Deferred the test fires.
    """

    def __init__(self):
        self.reads: list[Deferred] = []
        self.cancelled = 0
        self.closed = False

    def read(self, n):
        d = Deferred(self._cancel)
        self.reads.append(d)
        return d

    def _cancel(self, d):
        self.cancelled += 1

    def size(self):
        return None

    def close(self):
        self.closed = True


class SessionMixin:
    def start(
        self,
        content=b"",
        negotiated=Negotiated(),
        schedule=SCHEDULE,
        rollover=0,
        response=None,
        round_trip=None,
    ):
        """
        Start a session on a fake port and return that port.
        """
        self.reactor = FakeUDPReactor()
        self.response = response if response is not None else RecordingResponse(content)
        self.ended = []
        self.session = ReadSession(
            clock=self.reactor,
            peer=PEER,
            response=self.response,
            negotiated=negotiated,
            schedule=schedule,
            rollover=rollover,
            stats=SessionStats(peer=PEER, server_addr=("192.0.2.1", 69), file_path="f"),
            on_end=self.ended.append,
            round_trip=round_trip,
        )
        return self.reactor.listenUDP(0, self.session, interface="192.0.2.1")

    def assertFinished(self, port, outcome):
        """
        The session ended with C{outcome} and left nothing behind.
        """
        self.assertEqual(self.session.stats.outcome, outcome)
        self.assertEqual(self.ended, [self.session])
        self.assertFalse(port.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(self.response.closed)


class LockStepTests(SessionMixin, SynchronousTestCase):
    """
    RFC 1350 transfers: one block, one ACK.
    """

    def test_blocks_follow_acks(self):
        """
        DATA 1 is sent at once; each ACK brings the next block; the last
        block is shorter than the block size and its ACK ends the session.
        """
        port = self.start(b"a" * 512 + b"b" * 100)
        self.assertEqual(port.take(), [data(1, b"a" * 512)])
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [data(2, b"b" * 100)])
        port.deliver(ack(2), PEER)
        self.assertEqual(port.take(), [])
        self.assertFinished(port, Outcome.COMPLETED)
        self.assertEqual(self.session.stats.bytes_sent, 612)

    def test_ended_session_lets_go_of_its_port(self):
        """
        An ended transfer holds no reference to its port, so the port and
        the transfer (the port's protocol) are freed by reference counting
        alone.  A cycle between them left every transfer to the cycle
        collector, whose passes cost a storm of 1 KiB transfers a seventh
        of its CPU (benchmarks/micro.py: 75 against 65 microseconds).
        """
        port = self.start(b"a" * 100)
        port.deliver(ack(1), PEER)
        self.assertFinished(port, Outcome.COMPLETED)
        gone = weakref.ref(port)
        collecting = gc.isenabled()
        gc.disable()
        try:
            del port, self.reactor.ports[:]
            self.assertIsNone(gone())
        finally:
            if collecting:
                gc.enable()

    def test_exact_multiple_ends_with_empty_block(self):
        """
        A file whose size is a multiple of the block size ends with a
        zero-length DATA, so the client knows it is over.
        """
        port = self.start(b"x" * 1024)
        port.deliver(ack(1), PEER)
        port.deliver(ack(2), PEER)
        self.assertEqual(
            port.take(), [data(1, b"x" * 512), data(2, b"x" * 512), data(3, b"")]
        )
        port.deliver(ack(3), PEER)
        self.assertFinished(port, Outcome.COMPLETED)

    def test_empty_file(self):
        """
        An empty file is one empty DATA block.
        """
        port = self.start(b"")
        self.assertEqual(port.take(), [data(1, b"")])
        port.deliver(ack(1), PEER)
        self.assertFinished(port, Outcome.COMPLETED)

    def test_duplicate_ack_sends_nothing(self):
        """
        A repeated ACK is never answered with DATA (the Sorcerer's Apprentice
        bug, RFC 1123 4.2.3.1): only the timer retransmits.
        """
        port = self.start(b"x" * 2000)
        port.deliver(ack(1), PEER)
        port.take()
        port.deliver(ack(1), PEER)
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [])
        port.deliver(ack(2), PEER)
        self.assertEqual(port.take(), [data(3, b"x" * 512)])

    def test_ack_for_unsent_block_ignored(self):
        """
        An ACK for a block not yet sent changes nothing.
        """
        port = self.start(b"x" * 2000)
        port.take()
        port.deliver(ack(5), PEER)
        self.assertEqual(port.take(), [])
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [data(2, b"x" * 512)])


class RetransmitTests(SessionMixin, SynchronousTestCase):
    """
    The timer: retransmission with backoff, and giving up.
    """

    def test_retransmit_after_timeout(self):
        """
        Without an ACK, the same DATA goes again after the first wait.
        """
        port = self.start(b"x" * 100)
        port.take()
        self.reactor.advance(0.999)
        self.assertEqual(port.take(), [])
        self.reactor.advance(0.001)
        self.assertEqual(port.take(), [data(1, b"x" * 100)])
        self.assertEqual(self.session.stats.retransmits, 1)

    def test_backoff_then_give_up(self):
        """
        Once the peer has acknowledged a block, the waits follow the whole
        schedule; after the last one the session ends without sending
        anything more.
        """
        port = self.start(b"x" * 600)
        port.deliver(ack(1), PEER)
        port.take()
        sent_at = []
        for _ in range(20):
            self.reactor.advance(0.5)
            if port.take():
                sent_at.append(self.reactor.seconds())
        # Sent at 0, then after waits of 1 and 2; given up 4 s after that.
        self.assertEqual(sent_at, [1.0, 3.0])
        self.assertFinished(port, Outcome.TIMEOUT)
        self.assertEqual(self.session.stats.end_time, 7.0)

    def test_progress_resets_backoff(self):
        """
        After an ACK brings progress, the next wait is the first one again.
        """
        port = self.start(b"x" * 2000)
        port.deliver(ack(1), PEER)
        self.reactor.advance(1)
        self.reactor.advance(2)
        self.assertEqual(len(port.take()), 4)
        port.deliver(ack(2), PEER)
        port.take()
        self.reactor.advance(1)
        self.assertEqual(port.take(), [data(3, b"x" * 512)])

    def test_backoff_schedule(self):
        """
        The schedule doubles up to eight times the first wait.
        """
        self.assertEqual(backoff_schedule(1, 5), (1, 2, 4, 8, 8, 8))
        self.assertEqual(backoff_schedule(0.5, 2), (0.5, 1, 2))
        self.assertEqual(backoff_schedule(3, 0), (3,))

    def test_hold_cuts_the_schedule(self):
        """
        With a hold time, the waits add up to it at most: a negotiated
        timeout of 255 s (a fixed interval, factor 1) holds a transfer for
        the hold time (sending its block once more half-way), not for
        hours.
        """
        self.assertEqual(backoff_schedule(1, 5, hold=10), (1, 2, 4, 3))
        self.assertEqual(backoff_schedule(255, 5, factor=1, hold=120), (60, 60))
        self.assertEqual(backoff_schedule(255, 0, factor=1, hold=120), (120,))
        self.assertEqual(backoff_schedule(3, 2, factor=1, hold=120), (3, 3, 3))

    def test_no_retries(self):
        """
        With no retries, the session gives up after the first wait.
        """
        port = self.start(b"x", schedule=(2.0,))
        port.take()
        self.reactor.advance(2)
        self.assertEqual(port.take(), [])
        self.assertFinished(port, Outcome.TIMEOUT)


class UnprovenPeerTests(SessionMixin, SynchronousTestCase):
    """
    A peer that has acknowledged nothing may not be at its address (a
    forged request): it draws two datagrams at most, none larger than the
    first reply.
    """

    def test_never_acked_draws_two_datagrams(self):
        """
        A request never acknowledged gets its first block and one
        retransmission, then the session ends at the end of the second
        wait, whatever retries the schedule allows.
        """
        port = self.start(b"x" * 1024 * 1024, schedule=(1.0, 2.0, 4.0, 8.0))
        self.reactor.pump([0.5] * 40)
        sent = port.take()
        self.assertEqual(sent, [data(1, b"x" * 512)] * 2)
        self.assertFinished(port, Outcome.TIMEOUT)
        self.assertEqual(self.session.stats.end_time, 3.0)

    def test_never_acked_oack_draws_two(self):
        """
        A request with options never acknowledged gets two OACKs and no
        DATA: windows and large blocks start only after ACK 0.
        """
        negotiated = Negotiated(
            blksize=8192, windowsize=16, oack={"blksize": "8192", "windowsize": "16"}
        )
        port = self.start(b"x" * 1024 * 1024, negotiated, schedule=(1.0, 2.0, 4.0))
        self.reactor.pump([0.5] * 40)
        sent = port.take()
        self.assertEqual(len(sent), 2)
        self.assertTrue(all(wire.decode(p) == wire.decode(sent[0]) for p in sent))
        self.assertIsInstance(wire.decode(sent[0]), wire.OptionAck)

    def test_proven_peer_gets_the_whole_schedule(self):
        """
        After the ACK of the OACK, the transfer retransmits as often as its
        schedule says.
        """
        negotiated = Negotiated(blksize=512, oack={"blksize": "512"})
        port = self.start(b"x" * 4096, negotiated, schedule=(1.0, 1.0, 1.0, 1.0))
        port.deliver(ack(0), PEER)
        port.take()
        self.reactor.pump([0.5] * 20)
        self.assertEqual(len(port.take()), 3)
        self.assertEqual(self.session.stats.retransmits, 3)


class ReadingResponse(RecordingResponse):
    """
    Bytes that remember the size of every read.
    """

    def __init__(self, content):
        super().__init__(content)
        self.reads = []

    def read(self, n):
        self.reads.append(n)
        return super().read(n)


class ReadAheadTests(SessionMixin, SynchronousTestCase):
    """
    A transfer whose client answers fast reads L{READ_AHEAD} bytes at a
    time; a slow one reads only what its window needs.
    """

    def transfer(self, content, negotiated, interval):
        """
        Acknowledge every window C{interval} seconds after it was sent, and
        return the payloads received.
        """
        port = self.port = self.start(response=ReadingResponse(content), negotiated=negotiated)
        received = []
        while not self.session.ended:
            packets = port.take()
            received += [packet[4:] for packet in packets]
            self.reactor.advance(interval)
            port.deliver(ack(len(received) & 0xFFFF), PEER)
        return received

    def test_fast_lock_step_reads_ahead(self):
        """
        ACKs within L{READ_AHEAD_INTERVAL}: after the first block, reads
        ask for L{READ_AHEAD} bytes, yet one block at a time goes out.
        """
        content = os.urandom(4 * READ_AHEAD)
        received = self.transfer(content, Negotiated(blksize=512), 0.0001)
        assert b"".join(received) == content
        assert all(len(payload) == 512 for payload in received[:-1])
        # 512 + 3 * READ_AHEAD, then a short read: the end.
        assert self.response.reads == [512] + [READ_AHEAD] * 4
        self.assertFinished(self.port, Outcome.COMPLETED)

    def test_slow_lock_step_reads_a_block_at_a_time(self):
        """
        ACKs slower than L{READ_AHEAD_INTERVAL}: every read is one block,
        so a waiting transfer holds no more than its window.
        """
        content = os.urandom(20 * 512 + 7)
        received = self.transfer(content, Negotiated(blksize=512), 5 * READ_AHEAD_INTERVAL)
        assert b"".join(received) == content
        assert set(self.response.reads) == {512}

    def test_fast_windows_send_a_window_at_a_time(self):
        """
        With a window of 4 blocks, blocks read ahead wait for their window:
        each ACK of a window brings exactly the next 4 blocks.
        """
        content = os.urandom(40 * 512)
        port = self.start(
            response=ReadingResponse(content), negotiated=Negotiated(blksize=512, windowsize=4)
        )
        windows = [port.take()]
        for block in range(4, 41, 4):
            port.deliver(ack(block), PEER)
            windows.append(port.take())
        assert [len(window) for window in windows] == [4] * 10 + [1]
        payloads = [packet[4:] for window in windows for packet in window]
        assert b"".join(payloads) == content
        assert self.response.reads[:2] == [4 * 512, READ_AHEAD]


class WindowTests(SessionMixin, SynchronousTestCase):
    """
    RFC 7440 windows.
    """

    def test_window_sent_at_once(self):
        """
        A window of W blocks goes out at once; the ACK of its last block
        brings the next window.
        """
        port = self.start(bytes(range(8)) * 100, Negotiated(blksize=100, windowsize=4))
        self.assertEqual([p[:4] for p in port.take()], [data(n, b"") for n in (1, 2, 3, 4)])
        port.deliver(ack(4), PEER)
        self.assertEqual([p[:4] for p in port.take()], [data(n, b"") for n in (5, 6, 7, 8)])
        port.deliver(ack(8), PEER)
        self.assertEqual(port.take(), [data(9, b"")])
        port.deliver(ack(9), PEER)
        self.assertFinished(port, Outcome.COMPLETED)

    def test_window_leaves_in_one_send(self):
        """
        A window goes to the port in one C{send_window} call, as the real
        transfer socket sends it in one system call; a window of one block
        is one C{write}.
        """
        port = self.start(b"w" * 250, Negotiated(blksize=100, windowsize=2))
        self.assertEqual(port.windows, [2])
        port.take()
        port.deliver(ack(2), PEER)
        self.assertEqual(port.windows, [2])
        self.assertEqual(port.take(), [data(3, b"w" * 50)])

    def test_refused_block_counts_as_lost(self):
        """
        A block the kernel refuses (a full socket buffer) is not counted as
        sent, and the timer sends it again.
        """
        port = self.start(b"w" * 250, Negotiated(blksize=100, windowsize=2))
        port.take()
        port.refuse = True
        port.deliver(ack(2), PEER)
        self.assertEqual(self.session.stats.packets_sent, 2)
        port.refuse = False
        self.reactor.advance(SCHEDULE[0])
        self.assertEqual(port.take(), [data(3, b"w" * 50)])
        self.assertEqual(self.session.stats.packets_sent, 3)

    def test_ack_inside_window_resumes_after_it(self):
        """
        An ACK for an earlier block of the window, with no other ACK in the
        gap wait after it, means the rest was lost: a whole window goes
        again from right after the acknowledged block: the blocks sent
        before count as retransmissions, the new ones as blocks sent.
        """
        content = b"".join(bytes([n]) * 10 for n in range(1, 20))
        port = self.start(content, Negotiated(blksize=10, windowsize=4))
        port.take()
        port.deliver(ack(2), PEER)
        self.assertEqual(port.take(), [])
        self.reactor.advance(GAP_WAIT)
        self.assertEqual(
            port.take(), [data(n, bytes([n]) * 10) for n in (3, 4, 5, 6)]
        )
        self.assertEqual(self.session.stats.retransmits, 2)
        self.assertEqual(self.session.stats.blocks_sent, 6)

    def test_client_acking_every_block(self):
        """
        A client that acknowledges every block of a window is told from a
        gap by its next ACK: the window slides and new blocks top it up, so
        the file goes about once.
        """
        content = bytes(range(256)) * 40
        port = self.start(content, Negotiated(blksize=16, windowsize=8))
        received = {}
        for _ in range(2000):
            sent = port.take()
            if not sent:
                self.reactor.advance(0.001)
                if self.session.ended:
                    break
                continue
            for packet in sent:
                block = struct.unpack("!H", packet[2:4])[0]
                received.setdefault(block, packet[4:])
                port.deliver(ack(block), PEER)
        self.assertEqual(b"".join(received[n] for n in sorted(received)), content)
        blocks = len(content) // 16 + 1
        self.assertLessEqual(self.session.stats.packets_sent, 1.1 * blocks)
        self.assertEqual(self.session.stats.outcome, Outcome.COMPLETED)

    def test_client_acking_every_block_recovers_a_loss(self):
        """
        Once a client acknowledges every block, a repeated ACK says it
        missed the next block: the window goes again from there.
        """
        content = bytes(range(256)) * 4
        port = self.start(content, Negotiated(blksize=16, windowsize=4))
        port.take()
        port.deliver(ack(1), PEER)
        port.deliver(ack(2), PEER)
        port.take()
        port.deliver(ack(2), PEER)
        self.assertEqual(
            [struct.unpack("!H", p[2:4])[0] for p in port.take()], [3, 4, 5, 6]
        )

    def test_timeout_probes_then_resends_whole_window(self):
        """
        The first timeout of a window sends its last block alone (a tail
        loss probe: a loss before it would have drawn the client's ACK of
        the gap); the next one sends the whole unacknowledged window again.
        """
        port = self.start(b"z" * 95, Negotiated(blksize=10, windowsize=3))
        port.take()
        port.deliver(ack(3), PEER)
        window = port.take()
        self.assertEqual(window, [data(block, b"z" * 10) for block in (4, 5, 6)])
        self.reactor.advance(SCHEDULE[0])
        self.assertEqual(port.take(), window[-1:])
        self.reactor.advance(SCHEDULE[1])
        self.assertEqual(port.take(), window)
        self.assertEqual(self.session.stats.retransmits, 4)

    def test_probe_answered_with_the_last_ack_sends_the_window(self):
        """
        A client that got none of the window answers the probe with the
        ACK of where it is: the whole window goes again at once.
        """
        port = self.start(b"z" * 95, Negotiated(blksize=10, windowsize=3))
        port.take()
        port.deliver(ack(3), PEER)
        window = port.take()
        self.reactor.advance(SCHEDULE[0])
        self.assertEqual(port.take(), window[-1:])
        port.deliver(ack(3), PEER)
        self.assertEqual(port.take(), window)

    def test_stale_ack_ignored(self):
        """
        An ACK older than the last one acknowledged does nothing.
        """
        port = self.start(b"z" * 95, Negotiated(blksize=10, windowsize=3))
        port.deliver(ack(3), PEER)
        port.take()
        port.deliver(ack(2), PEER)
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [])


class RolloverTests(SessionMixin, SynchronousTestCase):
    """
    Block numbers after 65535.
    """

    def run_through(self, rollover):
        blocks = 65540
        port = self.start(b"r" * (8 * blocks), Negotiated(blksize=8), rollover=rollover)
        numbers = []
        for _ in range(blocks + 1):
            (packet,) = port.take()
            number = struct.unpack("!H", packet[2:4])[0]
            numbers.append(number)
            port.deliver(ack(number), PEER)
        self.assertFinished(port, Outcome.COMPLETED)
        return numbers

    def test_wraps_to_zero(self):
        """
        By default block 65535 is followed by 0, and the transfer completes.
        """
        numbers = self.run_through(0)
        self.assertEqual(numbers[65533:65538], [65534, 65535, 0, 1, 2])
        self.assertEqual(len(numbers), 65541)

    def test_wraps_to_one(self):
        """
        With rollover 1, block 65535 is followed by 1.
        """
        numbers = self.run_through(1)
        self.assertEqual(numbers[65533:65538], [65534, 65535, 1, 2, 3])


class OptionAckTests(SessionMixin, SynchronousTestCase):
    """
    Sessions that start with an OACK (RFC 2347).
    """

    NEGOTIATED = Negotiated(blksize=1000, oack={"blksize": "1000", "tsize": "1500"})

    def test_oack_then_data_after_ack_zero(self):
        """
        The OACK goes first; DATA 1 follows only the client's ACK 0.
        """
        port = self.start(b"o" * 1500, self.NEGOTIATED)
        self.assertEqual(port.take(), [b"\0\6blksize\0" b"1000\0tsize\0" b"1500\0"])
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [])
        port.deliver(ack(0), PEER)
        self.assertEqual(port.take(), [data(1, b"o" * 1000)])

    def test_oack_retransmitted(self):
        """
        An unanswered OACK is sent again by the timer.
        """
        port = self.start(b"o", self.NEGOTIATED)
        oack = port.take()
        self.reactor.advance(1)
        self.assertEqual(port.take(), oack)

    def test_error_after_oack_is_a_probe(self):
        """
        A client that answers the OACK with ERROR 8 (a PXE ROM asking only
        for the size) ends the session quietly, as a probe, not a failure.
        """
        port = self.start(b"o", self.NEGOTIATED)
        port.take()
        port.deliver(error(8, "tsize only"), PEER)
        self.assertEqual(port.take(), [])
        self.assertFinished(port, Outcome.PROBE)
        self.assertEqual(self.session.stats.error_code, 8)


class PeerTests(SessionMixin, SynchronousTestCase):
    """
    Datagrams that are not the expected ACK.
    """

    def test_stray_gets_unknown_tid(self):
        """
        A datagram from another port gets ERROR 5, and the transfer goes on.
        """
        port = self.start(b"s" * 600)
        port.take()
        stranger = (PEER[0], PEER[1] + 1)
        port.deliver(ack(1), stranger)
        (reply,) = port.sent
        self.assertEqual(reply[1], stranger)
        self.assertEqual(wire.decode(reply[0]).code, wire.ErrorCode.UNKNOWN_TID)
        port.take()
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [data(2, b"s" * 88)])

    def test_stray_counts_in_no_figure_of_the_transfer(self):
        """
        The ERROR 5 sent to a stranger is not the transfer's packet: the
        transfer's C{packets_sent} does not count it.
        """
        port = self.start(b"s" * 600)
        before = self.session.stats.packets_sent
        port.deliver(ack(1), (PEER[0], PEER[1] + 1))
        self.assertEqual(self.session.stats.packets_sent, before)

    def test_catch_up_reads_what_waits(self):
        """
        C{catch_up} hands the session what has arrived for it and says
        whether it is still running: the last ACK waiting unread ends it.
        """
        port = self.start(b"s" * 100)
        port.arrive(ack(1), PEER)
        self.assertFalse(self.session.catch_up())
        self.assertFinished(port, Outcome.COMPLETED)

    def test_catch_up_with_nothing_waiting(self):
        """
        With nothing waiting, C{catch_up} changes nothing and the transfer
        is still running.
        """
        port = self.start(b"s" * 100)
        self.assertTrue(self.session.catch_up())
        self.assertTrue(port.listening)

    def test_stray_error_not_answered(self):
        """
        An ERROR from a stranger is not answered (no error ping-pong) and
        does not end the transfer.
        """
        port = self.start(b"s" * 600)
        port.take()
        port.deliver(error(0, "x"), ("198.51.100.1", 69))
        self.assertEqual(port.take(), [])
        self.assertFalse(self.session.ended)

    def test_peer_error_ends_transfer(self):
        """
        An ERROR from the client during the transfer ends it.
        """
        port = self.start(b"e" * 600)
        port.deliver(ack(1), PEER)
        port.take()
        port.deliver(error(0, "disk full"), PEER)
        self.assertFinished(port, Outcome.PEER_ERROR)
        self.assertEqual(self.session.stats.error_message, "disk full")

    def test_noise_from_peer_ignored(self):
        """
        Garbage and repeated requests from the client change nothing.
        """
        port = self.start(b"n" * 600)
        port.take()
        for noise in (b"", b"\0", b"\0\4\0", wire.ReadRequest("f", "octet").encode()):
            port.deliver(noise, PEER)
        self.assertEqual(port.take(), [])
        port.deliver(ack(1), PEER)
        self.assertEqual(len(port.take()), 1)

    def test_abort(self):
        """
        Aborting tells the client with ERROR 0 and ends the session.
        """
        port = self.start(b"k" * 600)
        port.take()
        self.session.abort("terminated by operator")
        self.assertEqual(port.take(), [error(0, "terminated by operator")])
        self.assertFinished(port, Outcome.ABORTED)


class SlowContentTests(SessionMixin, SynchronousTestCase):
    """
    Content whose reads return Deferreds.
    """

    def test_data_waits_for_read(self):
        """
        Nothing is sent until the read fires, and the timer sends no DATA
        that is not there yet.
        """
        response = DeferredResponse()
        port = self.start(response=response)
        self.assertEqual(port.take(), [])
        self.reactor.advance(1)
        self.assertEqual(port.take(), [])
        response.reads[0].callback(b"d" * 512)
        self.assertEqual(port.take(), [data(1, b"d" * 512)])
        port.deliver(ack(1), PEER)
        response.reads[1].callback(b"end")
        self.assertEqual(port.take(), [data(2, b"end")])
        port.deliver(ack(2), PEER)
        self.assertFinished(port, Outcome.COMPLETED)

    def test_read_that_never_returns_times_out(self):
        """
        A read that never fires ends the session after the whole schedule,
        and the pending read is cancelled.
        """
        response = DeferredResponse()
        port = self.start(response=response)
        self.reactor.pump([1] * 10)
        self.assertFinished(port, Outcome.TIMEOUT)
        self.assertEqual(response.cancelled, 1)

    def test_synchronous_deferreds(self):
        """
        Reads that return already-fired Deferreds work like plain bytes.
        """

        class Fired(RecordingResponse):
            def read(self, n):
                return succeed(super().read(n))

        port = self.start(response=Fired(b"q" * 700))
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [data(1, b"q" * 512), data(2, b"q" * 188)])

    def test_read_error_sends_error(self):
        """
        A read that fails with a TFTP error sends that ERROR and ends.
        """

        class Failing(RecordingResponse):
            def read(self, n):
                raise FileNotFound("gone")

        port = self.start(response=Failing(b""))
        self.assertEqual(port.take(), [error(1, "gone")])
        self.assertFinished(port, Outcome.REFUSED)

    def test_unexpected_read_error_is_generic(self):
        """
        An unexpected exception reaches the client as ERROR 0 with a generic
        message, and the operator gets the traceback.
        """

        class Broken(RecordingResponse):
            def read(self, n):
                raise ZeroDivisionError("secret detail")

        port = self.start(response=Broken(b""))
        (packet,) = port.take()
        self.assertEqual(wire.decode(packet), wire.Error(0, "Internal server error"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class WindowClient:
    """
    An RFC 7440 client that behaves as the instrument's load generator
    does: it acknowledges a window's worth of blocks in order counted from
    its last ACK; on a gap, the last block in order, once (again only for a
    later window that misses the expected block again); on a block it got
    last, that block again, which restarts its count; and the last block in
    order when C{timeout} passes without one.

    @param lose: the DATA copies lost on the way, as C{(block, copy)} pairs
        (copy 0 is the first sending of that block).
    @param loss: and a chance of losing any copy, drawn from C{rng}.
    """

    def __init__(self, window, blksize, lose=(), loss=0.0, rng=None, timeout=1.0):
        self.window, self.blksize, self.timeout = window, blksize, timeout
        self.lose, self.loss, self.rng = set(lose), loss, rng
        self.copies: dict[int, int] = {}
        self.chunks: list[bytes] = []
        self.expected, self.since_ack = 1, 0
        self.gap_acked, self.gap_last_d = False, 0
        self.last, self.timeouts, self.received, self.done = 0.0, 0, 0, False

    def receive(self, packet: bytes, now: float) -> list[bytes]:
        block = struct.unpack("!H", packet[2:4])[0]
        copy = self.copies[block] = self.copies.get(block, -1) + 1
        if (block, copy) in self.lose or (self.loss and self.rng.random() < self.loss):
            return []
        self.received += 1
        if self.done:
            return []
        if block == self.expected:
            self.chunks.append(packet[4:])
            self.expected += 1
            self.last, self.gap_acked = now, False
            if len(packet) - 4 < self.blksize:
                self.done = True
                return [ack(block)]
            self.since_ack += 1
            if self.since_ack >= self.window:
                self.since_ack = 0
                return [ack(block)]
            return []
        prev = self.expected - 1
        if block == prev:
            self.since_ack = 0
            return [ack(prev)]
        d = block - self.expected
        if d > 0 and (not self.gap_acked or d <= self.gap_last_d):
            self.gap_acked, self.gap_last_d, self.since_ack = True, d, 0
            return [ack(prev)]
        if d > 0:
            self.gap_last_d = d
        return []

    def tick(self, now: float) -> list[bytes]:
        if self.done or now - self.last < self.timeout:
            return []
        self.timeouts += 1
        self.last, self.since_ack = now, 0
        return [ack(self.expected - 1)]


class WindowLossTests(SessionMixin, SynchronousTestCase):
    """
    Windows under loss, against an RFC 7440 client: a gap draws a whole
    window again from the first block not acknowledged, and the transfer
    stays in step with the client's count of a window.
    """

    RTT = 0.001

    def round_trip(self):
        return RoundTrip(1.0, floor=0.05, ceiling=8.0)

    def exchange(self, port, client, limit=120.0):
        """
        Run the transfer: the server's datagrams reach the client half a
        round trip after they leave, and its ACKs come back in the other
        half; when nothing is on the way, the clock moves to the next timer.
        """
        clock = self.reactor
        while not self.session.ended and clock.seconds() < limit:
            sent = port.take()
            if sent:
                clock.advance(self.RTT / 2)
                acks = []
                for packet in sent:
                    acks += client.receive(packet, clock.seconds())
                clock.advance(self.RTT / 2)
            else:
                timers = [call.getTime() for call in clock.getDelayedCalls()]
                wake = min(timers + [client.last + client.timeout])
                clock.advance(max(wake - clock.seconds(), 0))
                acks = client.tick(clock.seconds())
            for packet in acks:
                if not self.session.ended:
                    port.deliver(packet, PEER)

    def blocks(self, sent):
        return [struct.unpack("!H", p[2:4])[0] for p in sent]

    def test_gap_resends_a_window_from_it(self):
        """
        An RFC 7440 client that misses a block acknowledges the one before:
        after the gap wait a whole window goes from the missing block.
        """
        content = os.urandom(10 * 40 + 3)
        port = self.start(content, Negotiated(blksize=10, windowsize=8), round_trip=self.round_trip())
        client = WindowClient(8, 10, lose={(3, 0)})
        for packet in port.take():
            for reply in client.receive(packet, 0.0):
                port.deliver(reply, PEER)
        self.reactor.advance(GAP_WAIT)
        self.assertEqual(self.blocks(port.take()), list(range(3, 11)))

    def test_tail_loss_keeps_the_window_in_step(self):
        """
        When the end of a window is lost, the timer sends the window's last
        block alone (the tail loss probe), which completes the client's
        window: it acknowledges it, and every later block goes once.
        """
        content = os.urandom(10 * 40 + 3)
        port = self.start(content, Negotiated(blksize=10, windowsize=4), round_trip=self.round_trip())
        client = WindowClient(4, 10, lose={(8, 0)})
        self.exchange(port, client)
        self.assertEqual(b"".join(client.chunks), content)
        self.assertEqual(client.timeouts, 0)
        self.assertEqual(self.session.stats.retransmits, 1)
        self.assertEqual(self.session.stats.packets_sent, 41 + 1)

    def test_partial_acks_of_several_blocks_are_gaps(self):
        """
        Two partial ACKs in one gap wait, the second of several blocks, are
        what an RFC 7440 client sends when it repeats the ACK of a block it
        got twice and then misses one: a gap, not a client acknowledging
        every block, so the window goes again from the missing block.
        """
        content = os.urandom(10 * 40 + 3)
        port = self.start(content, Negotiated(blksize=10, windowsize=8))
        port.take()
        port.deliver(ack(2), PEER)
        port.deliver(ack(5), PEER)
        self.assertEqual(port.take(), [])
        self.reactor.advance(GAP_WAIT)
        self.assertEqual(self.blocks(port.take()), list(range(6, 14)))

    def test_acking_every_block_lapses(self):
        """
        A client taken for one that acknowledges every block and that then
        acknowledges several blocks short of the flight has a gap there.
        """
        content = os.urandom(10 * 40 + 3)
        port = self.start(content, Negotiated(blksize=10, windowsize=8))
        port.take()
        port.deliver(ack(1), PEER)
        port.deliver(ack(2), PEER)
        self.assertEqual(self.blocks(port.take()), [9, 10])
        port.deliver(ack(5), PEER)
        self.assertEqual(port.take(), [])
        self.reactor.advance(GAP_WAIT)
        self.assertEqual(self.blocks(port.take()), list(range(6, 14)))

    def test_repeated_ack_is_a_gap(self):
        """
        An RFC 7440 client that misses the first block of a window
        acknowledges the block before it again: the window goes again at
        once.
        """
        content = os.urandom(10 * 40 + 3)
        port = self.start(content, Negotiated(blksize=10, windowsize=4))
        port.deliver(ack(4), PEER)
        port.take()
        port.deliver(ack(4), PEER)
        self.assertEqual(self.blocks(port.take()), [5, 6, 7, 8])

    def test_random_loss(self):
        """
        Under 2 % loss of DATA an RFC 7440 client never has to wait for its
        own timer, and the transfer sends at most 1.2 DATA per block (the
        floor of go-back-N at a window of 16 is about 1.17).
        """
        content = os.urandom(100 * 3000 + 7)
        for seed in range(3):
            port = self.start(content, Negotiated(blksize=100, windowsize=16), round_trip=self.round_trip())
            client = WindowClient(16, 100, loss=0.02, rng=random.Random(seed))
            self.exchange(port, client)
            self.assertEqual(b"".join(client.chunks), content)
            self.assertEqual(client.timeouts, 0)
            self.assertLessEqual(self.session.stats.packets_sent / 3001, 1.25)


class PacingTests(SessionMixin, SynchronousTestCase):
    """
    The back-off in time of RFC 7440 section 6: a window lost in part makes
    the next one wait, longer on each loss, and whole windows take the wait
    away again; a window is never shorter for it.
    """

    def lossy_window(self, port, acked):
        """
        Lose the third block of the window after C{acked}; return the block
        the resent window ends with, once its ACK has arrived.
        """
        port.deliver(ack(acked + 2), PEER)
        self.reactor.advance(GAP_WAIT)
        self.assertEqual(len(port.take()), 4)
        port.deliver(ack(acked + 6), PEER)
        return acked + 6

    def test_a_loss_delays_the_next_window(self):
        """
        After a window with a gap, the next waits L{MIN_PAUSE} (or a round
        trip, if longer); after a whole window, the next goes at once.
        """
        port = self.start(os.urandom(10 * 200), Negotiated(blksize=10, windowsize=4))
        port.take()
        acked = self.lossy_window(port, 0)
        self.assertEqual(port.take(), [])
        self.reactor.advance(MIN_PAUSE)
        self.assertEqual(len(port.take()), 4)
        port.deliver(ack(acked + 4), PEER)
        self.assertEqual(len(port.take()), 4)

    def test_the_wait_doubles_to_a_bound(self):
        """
        Each window lost in part doubles the wait, up to L{MAX_PAUSE}.
        """
        port = self.start(os.urandom(10 * 200), Negotiated(blksize=10, windowsize=4))
        port.take()
        acked, pause = 0, MIN_PAUSE
        for _ in range(10):
            acked = self.lossy_window(port, acked)
            self.reactor.advance(pause * 0.99)
            self.assertEqual(port.take(), [])
            self.reactor.advance(pause * 0.02)
            self.assertEqual(len(port.take()), 4)
            pause = min(pause * 2, MAX_PAUSE)
        self.assertEqual(pause, MAX_PAUSE)

    def test_lock_step_is_not_paced(self):
        """
        A transfer without windows waits for each ACK anyway: its next
        block follows an ACK at once, retransmission or not.
        """
        port = self.start(b"x" * 2000, Negotiated())
        port.take()
        self.reactor.advance(SCHEDULE[0])
        port.take()
        port.deliver(ack(1), PEER)
        self.assertEqual(port.take(), [data(2, b"x" * 512)])


class SpuriousTimeoutTests(SessionMixin, SynchronousTestCase):
    """
    A timeout the client did not need shows when it acknowledges the same
    block twice: once for the block, once for its copy.
    """

    def start_proven(self, windowsize):
        port = self.start(
            b"x" * 20000,
            Negotiated(blksize=512, windowsize=windowsize),
            round_trip=RoundTrip(1.0, floor=0.05, ceiling=8.0),
        )
        port.deliver(ack(windowsize), PEER)
        port.take()
        self.reactor.advance(0.05)
        # The timer sends one block: lock-step's, or a window's last (the
        # tail loss probe).
        self.assertEqual(len(port.take()), 1)
        return port

    def test_counted_when_the_copy_is_acknowledged(self):
        """
        A block acknowledged twice after its timeout: the timeout was
        spurious, and the second ACK sends nothing.
        """
        port = self.start_proven(1)
        port.deliver(ack(2), PEER)
        self.assertEqual(port.take(), [data(3, b"x" * 512)])
        port.deliver(ack(2), PEER)
        self.assertEqual(port.take(), [])
        self.assertEqual(self.session.stats.spurious_rtos, 1)

    def test_window_counted_and_not_sent_again(self):
        """
        The same for a window: the client's repeat of the ACK of the
        window, answering the copy, does not send the next window twice.
        """
        port = self.start_proven(4)
        port.deliver(ack(8), PEER)
        port.deliver(ack(8), PEER)
        self.reactor.advance(MIN_PAUSE)
        self.assertEqual(len(port.take()), 4)
        self.assertEqual(self.session.stats.spurious_rtos, 1)

    def test_lost_block_not_counted(self):
        """
        A block really lost draws a single ACK, after its copy.
        """
        port = self.start_proven(1)
        port.deliver(ack(2), PEER)
        self.reactor.advance(0.01)
        port.deliver(ack(3), PEER)
        self.assertEqual(self.session.stats.spurious_rtos, 0)
