"""
One read transfer: a state machine on its own port.

A L{ReadSession} is the protocol of the port that is the transfer's TID (an
L{tftpd_tx.transport.ITransferPort}).  It sends an OACK or the first window,
then moves forward on ACKs and backward only on its timer.  Its only clock
is the injected C{IReactorTime}; its only output is its port's C{write} (one
datagram) and C{send_window} (several).  Tests drive it with
L{twisted.internet.task.Clock} and the fake ports of L{tftpd_tx.testing},
which implement the same contract as the real ones.

Block numbers: the session counts blocks with unbounded integers (block 0 is
the OACK) and maps them to the 16-bit wire number only when a packet is built
or an ACK is matched, so rollover is one function and not a special case.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from . import wire
from .content import error_for
from .options import Negotiated
from .stats import Outcome, SessionStats
from .rtt import RoundTrip
from .timers import Timer, TimerQueue
from .transport import ITransferPort

__all__ = ["backoff_schedule", "ReadSession", "UNPROVEN_SENDS"]

_ack_block = wire.ack_block
_is_error = wire.is_error
_data_header = wire.data_header
_UNKNOWN_TID = wire.Error(wire.ErrorCode.UNKNOWN_TID, "Unknown transfer ID").encode()

#: Bytes a fast transfer reads at a time (see L{ReadSession}): at blksize
#: 512 one read, and one system call for a file, per 32 blocks.
READ_AHEAD = 16 * 1024
#: A transfer whose ACKs come closer together than this (more than 100
#: blocks a second) reads ahead; a slower one reads what its window needs,
#: and holds no more memory than that while it waits for its client.
READ_AHEAD_INTERVAL = 0.01


#: The least time a partial ACK of a window waits for the next ACK before
#: it counts as a gap (see L{ReadSession._partial}).
GAP_WAIT = 0.002
#: How many gap waits a partial ACK of a single block waits.
ONE_BLOCK_WAITS = 5

#: The pause between windows after a first loss (or the smoothed round
#: trip, if longer: a pause of one round trip halves the rate), and the
#: most it doubles to while every window loses blocks (see
#: L{ReadSession._slow_down}).
MIN_PAUSE = 0.001
MAX_PAUSE = 0.1

#: Datagrams a transfer sends its peer before the peer has proven that it
#: is at its address (by acknowledging anything): the first reply and one
#: retransmission.  A spoofed request then draws at most this many replies.
UNPROVEN_SENDS = 2


@functools.lru_cache(maxsize=64)
def backoff_schedule(
    initial: float,
    retries: int,
    factor: float = 2.0,
    ceiling: float = 8.0,
    hold: float | None = None,
) -> tuple[float, ...]:
    """
    The waits of a retransmit schedule.

    Element C{i} is how long to wait for progress after the C{i}-th
    transmission of the same packets (0 is the first sending); the session
    gives up when the last wait passes.  Waits grow by C{factor} up to
    C{ceiling} times the initial wait, so a client that went away costs a
    bounded time and few packets.  Every transfer asks for one, and a server
    uses only a few: they are computed once.

    @param initial: the first wait, in seconds.
    @param retries: how many times to retransmit before giving up.
    @param hold: the most seconds the waits may add up to: the schedule is
        cut there (the last wait shortened; one wait as long as the hold
        becomes two of half), so that no client, whatever it negotiated,
        holds a transfer longer without progress.
    """
    waits = [initial * min(factor**attempt, ceiling) for attempt in range(retries + 1)]
    if hold is not None:
        kept, total = [], 0.0
        for wait in waits:
            if total + wait >= hold:
                kept.append(hold - total)
                break
            kept.append(wait)
            total += wait
        if len(kept) == 1 and retries:
            # A first wait as long as the hold would mean no retransmission
            # at all: halve it, so that a lost block is sent once more.
            kept = [hold / 2, hold / 2]
        waits = kept
    return tuple(waits)


class ReadSession(DatagramProtocol):
    """
    Send one response to one peer, from the port this protocol listens on.

    @param clock: the C{IReactorTime} that times the transfer.
    @param timers: the L{TimerQueue} that runs the retransmit timer (a
        server's transfers share one); L{None}: one of its own on C{clock}.
    @param peer: the client's C{(host, port)}; datagrams from anywhere else
        get ERROR 5 and change nothing.
    @param response: the L{tftpd_tx.content.IResponseData} to send; closed
        when the session ends.
    @param negotiated: the L{Negotiated} options; its C{oack}, if any, is
        sent first and must be acknowledged with ACK 0.
    @param schedule: the retransmit schedule (see L{backoff_schedule}).
        Until the peer acknowledges something, only the first
        L{UNPROVEN_SENDS} sendings of it are used: a request with a forged
        source address draws two datagrams, none larger than the OACK or a
        first block of 512 bytes (larger blocks and windows are negotiated
        in the OACK, and start only after its ACK).
    @param rollover: the block number that follows 65535: 0 or 1.
    @param stats: the L{SessionStats} to fill in.
    @param on_end: called with this session once it has ended and let go of
        its port, its timer and its response.
    @param on_stray: called with the address of every datagram from anyone
        but the peer; it returns whether to answer it with ERROR 5.
    @param round_trip: a L{RoundTrip} to time retransmissions by, once the
        peer has proven its address; then the waits are its RTO, doubled on
        each expiry, and the transfer gives up when it has gone without
        progress for as long as C{schedule} adds up to.  L{None}: the waits
        of C{schedule} as they are (a timeout the client negotiated).

    A transfer whose client acknowledges quickly (see
    L{READ_AHEAD_INTERVAL}) reads up to L{READ_AHEAD} bytes at once and
    keeps the blocks beyond its window as packets ready to go: a lock-step
    transfer of a file then costs one C{read} per 32 blocks at blksize 512
    instead of one per block, while thousands of slow transfers hold only
    their windows.
    """

    # Forty attributes are more than an instance dictionary shares its keys
    # for (CPython keeps up to 30 shared): without slots each transfer
    # carries a dictionary of its own, 1.5 KiB more of the few KiB that
    # thousands of slow transfers each hold.  The protocol's own
    # attributes (transport, numPorts) stay in the instance dictionary.
    __slots__ = (
        "_acked", "_ahead", "_attempt", "_blind", "_blksize", "_clock", "_deadline",
        "_eof", "_flight_at", "_flight_clean", "_gap_pending", "_high",
        "_last_progress", "_modulus", "_oack", "_on_end", "_on_stray", "_packets",
        "_patience", "_pause", "_paused", "_per_block", "_port", "_probe", "_proven",
        "_reading", "_resent_at", "_response", "_rollover", "_rtt", "_schedule",
        "_sent", "_timer", "_timers", "_unproven_sends", "_window", "_write", "ended",
        "peer", "stats",
    )

    noisy = False
    _log = Logger()

    def __init__(
        self,
        *,
        clock,
        timers: TimerQueue | None = None,
        peer: tuple[str, int],
        response,
        negotiated: Negotiated,
        schedule: Sequence[float],
        rollover: int,
        stats: SessionStats,
        on_end: Callable[[ReadSession], object] = lambda session: None,
        on_stray: Callable[[tuple[str, int]], bool] = lambda addr: True,
        round_trip: RoundTrip | None = None,
    ) -> None:
        self.peer = peer
        self._on_stray = on_stray
        self._rtt = round_trip
        self.stats = stats
        self._clock = clock
        self._timers = TimerQueue(clock) if timers is None else timers
        self._response = response
        self._blksize = negotiated.blksize
        self._window = negotiated.windowsize
        # Blocks read beyond the window while the transfer is fast.
        self._ahead = max(0, READ_AHEAD // negotiated.blksize - negotiated.windowsize)
        self._last_progress = 0.0
        self._schedule = tuple(schedule)
        self._unproven_sends = min(UNPROVEN_SENDS, len(self._schedule))
        self._patience = sum(self._schedule)
        self._on_end = on_end
        self._rollover = rollover
        self._modulus = 0x10000 if rollover == 0 else 0xFFFF
        self._oack = (
            wire.OptionAck(negotiated.oack).encode() if negotiated.oack else None
        )
        # The unacknowledged part of the transfer, and the blocks read ahead:
        # _packets[i] is the DATA packet for block _acked + 1 + i; the first
        # _sent of them (at most a window) are on the wire.  _eof is set
        # once the short (last) block has been read.
        self._acked = 0
        self._packets: list[bytes] = []
        self._sent = 0
        self._eof = False
        self._reading: Deferred | None = None
        self._port = None
        self._write = None
        self._attempt = 0
        self._proven = False
        # The highest block ever sent: a block at or below it goes again.
        self._high = 0
        # When the oldest block in flight was first sent, and whether any of
        # the flight has gone more than once (Karn's rule: then its ACK says
        # nothing about the round trip).
        self._flight_at = 0.0
        self._flight_clean = True
        # Whether the client acknowledges every block of a window, not just
        # the last one and its gaps (see _partial), and when the window last
        # went again.  _blind: the flight went again on the timer, without
        # word from the client of where it is (see _partial).
        self._per_block = False
        self._gap_pending = False
        self._resent_at = float("-inf")
        self._blind = False
        # The wait between windows, and whether the next window waits for
        # it now (see _slow_down).
        self._pause = 0.0
        self._paused = False
        # The block whose ACK ended a timeout, while a repeat of that ACK
        # would show the timeout spurious (see _ack).
        self._probe: int | None = None
        # One timer, moved as rarely as possible: progress only moves
        # _deadline, and the timer, when it fires early, sleeps the rest.
        self._timer: Timer | None = None
        self._deadline = 0.0
        self.ended = False

    @property
    def session_id(self) -> int | None:
        """
        The transfer's number on its server (from its L{SessionStats}).
        """
        return self.stats.session_id

    @property
    def proven(self) -> bool:
        """
        Whether the peer has acknowledged anything: it is at its address,
        not a forged one.
        """
        return self._proven

    @property
    def blocks_acknowledged(self) -> int:
        """
        How many DATA blocks the client has acknowledged so far (not wrapped
        at 65535).
        """
        return self._acked

    # -- the protocol -------------------------------------------------------

    def startProtocol(self) -> None:
        port = self._port = ITransferPort(self.transport)
        self._write = port.write
        host = port.getHost()
        now = self._last_progress = self._clock.seconds()
        self.stats.local_addr = (host.host, host.port)
        self.stats.start_time = self.stats.start_time or now
        if self._oack is not None:
            self.stats.first_data_time = self._flight_at = now
            self._send([self._oack])
        else:
            self._advance()
        self._arm(0, now)

    def datagramReceived(self, datagram: bytes, addr) -> None:
        if addr != self.peer:
            self._stray(datagram, addr)
            return
        number = _ack_block(datagram)
        if number is not None:
            self._ack(number)
        elif _is_error(datagram):
            self._peer_error(datagram)
        # Anything else from the peer (a repeated RRQ, a malformed ACK) is
        # noise that must not disturb the transfer: ignore it.

    def catch_up(self) -> bool:
        """
        Handle the datagrams that have already arrived for this transfer,
        now rather than when the reactor next looks, and tell whether it is
        still running.

        The listener asks this of the transfer of a peer that sends a new
        request: a client that starts again from the port of its last
        transfer (a PXE ROM ending its size probe with an ERROR) sends that
        transfer's last ACK or ERROR just before the new RRQ, and the two
        wait on different sockets.  A transfer that ends here makes the
        request a new one, not a retransmission.
        """
        if not self.ended and self._port is not None:
            self._port.read_pending()
        return not self.ended

    # -- moving forward -----------------------------------------------------

    def _ack(self, number: int) -> None:
        """
        Act on an ACK: progress if it acknowledges something new, nothing at
        all otherwise (but see L{_duplicate} for windows).  Answering a
        duplicate ACK with DATA in lock-step would double the traffic for
        the rest of the transfer (the Sorcerer's Apprentice bug, RFC 1123
        4.2.3.1); only the timer retransmits.
        """
        if self.ended:
            return
        # Whatever it acknowledges, the peer got a reply at its address.
        self._proven = True
        if self._oack is not None:
            if number != 0:
                return
            self._oack = None
            progress = 0
            remaining = 0
        else:
            if number == 0 and self._rollover:
                # After 65535 comes 1: no block is numbered 0 on the wire.
                return
            # A wire number is congruent to its block count modulo the wrap.
            progress = (number - self._acked) % self._modulus
            if not 0 < progress <= self._sent:
                if progress == 0 and number == self._wire_block(self._acked):
                    # The last ACK again (under rollover 1, 65535 is not 0).
                    if self._probe == self._acked:
                        # The client answers the copy the timeout sent.
                        self._probe = None
                        self.stats.spurious_rtos += 1
                    elif self._sent and self._window > 1:
                        self._duplicate()
                return
            remaining = self._sent - progress
        stats = self.stats
        stats.packets_acked += 1
        stats.last_ack_time = now = self._clock.seconds()
        fast = now - self._last_progress < READ_AHEAD_INTERVAL
        self._last_progress = now
        if self._flight_clean and self._rtt is not None and not remaining:
            self._rtt.sample(now - self._flight_at)
            stats.srtt = self._rtt.srtt
        self._acked += progress
        packets = self._packets
        del packets[:progress]
        if self._eof and not packets:
            self._end(Outcome.COMPLETED)
            return
        # A timeout that the ACK of its whole flight ends was spurious if
        # the client acknowledges the same block once more: it answers the
        # copy it did not need (a lost block or ACK draws a single answer).
        self._probe = self._acked if self._attempt and not remaining else None
        self._attempt = 0
        if remaining:
            self._partial(remaining, progress, now, fast)
            return
        # The whole flight arrived: the next window starts after it.
        self._gap_pending = False
        self._blind = False
        self._sent = 0
        clean = self._flight_clean
        self._flight_clean = True
        if self._window > 1 and self._paces(clean):
            self._paused = True
            self._deadline = now + self._pause
            self._wake_by(self._deadline)
            return
        self._advance(fast)
        self._arm(0, now)

    def _partial(self, remaining: int, progress: int, now: float, fast: bool) -> None:
        """
        An ACK inside the window, of C{progress} new blocks: C{remaining}
        blocks sent after it are not acknowledged yet.

        RFC 7440 clients acknowledge the last block of a window, and the
        last in-order block when they see a gap: then the rest of the
        window is lost and must go again, a whole window of it (a receiver
        acknowledges only a full window).  Other clients acknowledge every
        block; resending the rest of the window on each of their ACKs sends
        the file dozens of times over.  Tell them apart by what follows: the
        first partial ACK only slides the window and waits a moment (a few
        milliseconds, see L{_gap_wait}); an ACK of the next block in that
        moment shows a client that acknowledges every block, whose window
        slides from then on, new blocks topping it up; silence is a gap, and
        the timer resends the window from the first block not acknowledged.
        An ACK of a single block waits longer (L{ONE_BLOCK_WAITS} gap
        waits): it is what a client acknowledging every block sends, and a
        gap right after one block is rare.

        Only an ACK of the single next block in that moment is evidence of
        such a client: an RFC 7440 client also sends two partial ACKs close
        together (its repeat of a block it got twice, then a gap a few
        blocks on), and taking it for one that acknowledges every block
        would leave each of its gaps to the timer.  The evidence lapses on
        an ACK of several blocks short of the flight, and on a timeout.

        After the timer sent the flight again (C{_blind}), the first partial
        ACK is the client repeating the ACK of its last block in order, on
        seeing that block again, which restarts its count of a window
        there: the window slides to end a whole window after that block.
        Sending a window from the block after it instead would again hold
        the client's last block and draw the same repeat, two windows sent
        for every window of progress.  A gap in what follows still shows,
        as a repeat of that ACK (see L{_duplicate}) or a partial ACK.
        """
        self._sent = remaining
        if self._per_block and progress > 1:
            self._per_block = False
        if self._per_block or self._blind:
            self._blind = False
            self._gap_pending = False
            self._advance(fast)
            self._arm(0, now)
            return
        if self._gap_pending and progress == 1:
            # The next block's ACK before the gap wait ran out.
            self._per_block = True
            self._gap_pending = False
            self._advance(fast)
            self._arm(0, now)
            return
        self._gap_pending = True
        wait = self._gap_wait()
        self._deadline = now + (wait * ONE_BLOCK_WAITS if progress == 1 else wait)
        self._wake_by(self._deadline)

    def _gap_wait(self) -> float:
        """
        How long a partial ACK waits for the next one before it counts as a
        gap: long enough for a client that acknowledges every block to
        acknowledge the next, short beside a round trip's timeout.
        """
        srtt = self._rtt.srtt if self._rtt is not None else None
        wait = max(GAP_WAIT, (srtt or 0.0) / 4)
        return min(wait, self._wait(0))

    def _duplicate(self) -> None:
        """
        A repeated ACK of the last block acknowledged while a window is in
        flight: the client missed the next block (an RFC 7440 client
        acknowledges the last block in order on a gap; one that
        acknowledges every block repeats it for each block after the gap).
        Send the window again from there, once in half a timeout at most
        for a client that acknowledges every block (the repeats of one gap
        come a round trip long), once in a gap wait for the others (one
        repeat per gap: half a timeout would leave most gaps at the start
        of a window to the timer, at a gap every few windows).
        """
        now = self._clock.seconds()
        interval = self._wait(0) / 2 if self._per_block else self._gap_wait()
        if now - self._resent_at < interval:
            return
        self._resend_window(now)
        self._arm(0, now)

    def _resend_window(self, now: float) -> None:
        """
        Send a whole window again from the first block not acknowledged
        (RFC 7440: never fewer blocks than the window, or the receiver waits
        for the rest until its own timeout).
        """
        self._resent_at = now
        self._gap_pending = False
        self._blind = False
        self._flight_clean = False
        self._sent = 0
        self._slow_down()
        self._advance()

    def _slow_down(self) -> None:
        """
        Back off in time on loss (RFC 7440 section 6, RFC 8085): the wait
        between windows starts at a round trip (L{MIN_PAUSE} at least) and
        doubles on each loss, up to L{MAX_PAUSE}.  Never by sending fewer
        blocks: an RFC 7440 client acknowledges only a whole window, and a
        shorter one stalls it until its own timeout.
        """
        srtt = self._rtt.srtt if self._rtt is not None else None
        first = max(MIN_PAUSE, srtt or 0.0)
        self._pause = min(max(self._pause * 2, first), MAX_PAUSE)

    def _paces(self, clean: bool) -> bool:
        """
        Whether the next window waits (see L{_slow_down}); a window that
        arrived whole without a retransmission halves the wait, down to
        none.
        """
        if clean and self._pause:
            self._pause /= 2
            if self._pause < MIN_PAUSE:
                self._pause = 0.0
        return self._pause > 0

    def _advance(self, fast: bool = False) -> None:
        """
        Read what the window lacks (unless the content ended or a read is
        pending), and the blocks ahead of it when C{fast}; send what of the
        window has not been sent, and wait for an ACK.

        The blocks a window lacks are read with one C{read}: the contract
        of C{read(n)} (fewer than C{n} bytes only at the end) makes one read
        of several blocks the same as several reads of one, and a window of
        16 then costs one call and one system call instead of 16.
        """
        missing = self._window - len(self._packets)
        if missing > 0 and not self._eof and self._reading is None:
            asked = (missing + self._ahead if fast else missing) * self._blksize
            try:
                chunk = self._response.read(asked)
            except Exception as exc:
                self._content_failed(exc)
                return
            if type(chunk) is not bytes and isinstance(chunk, Deferred):
                # What the window holds already goes; the rest when it fires.
                self._reading = chunk
                chunk.addCallbacks(self._read_done, self._read_failed, (asked,))
            else:
                self._add_blocks(chunk, asked)
        self._send_unsent()

    def _add_blocks(self, chunk: bytes, asked: int) -> None:
        """
        Cut what a read returned into DATA packets.  A read shorter than
        asked is the end: its last block is short, empty if need be.
        """
        packets, blksize = self._packets, self._blksize
        block = self._acked + len(packets)
        end = len(chunk)
        if asked == blksize:
            # Lock-step: the chunk is the block, short if it is the last.
            packets.append(_data_header(self._wire_block(block + 1)) + chunk)
            self._eof = end < blksize
            return
        view = memoryview(chunk)
        if end < asked:
            self._eof = True
            # The last block is the short remainder, or empty when the
            # content ended on a block boundary.
            last = end - end % blksize
        else:
            last = end
        for start in range(0, last, blksize):
            block += 1
            packets.append(
                _data_header(self._wire_block(block)) + view[start : start + blksize]
            )
        if self._eof:
            block += 1
            packets.append(_data_header(self._wire_block(block)) + view[last:])

    def _send_unsent(self) -> None:
        """
        Send the blocks of the window that are not on the wire yet.  A
        block sent before counts as a retransmission; the others in
        C{blocks_sent} and C{bytes_sent}.
        """
        packets = self._packets
        sent = self._sent
        window = self._window
        if window > len(packets):
            window = len(packets)
        if sent == window:
            return
        stats = self.stats
        if not sent:
            self._flight_at = self._clock.seconds()
            if stats.first_data_time is None:
                stats.first_data_time = self._flight_at
        # Lock-step, the most common case by far, takes no slice.
        unsent = (packets[sent],) if window - sent == 1 else packets[sent:window]
        written = self._send(unsent)
        if written:
            first = self._acked + sent + 1
            last = first + written - 1
            fresh = last - self._high if last > self._high else 0
            if fresh > written:
                fresh = written
            if fresh < written:
                stats.retransmits += written - fresh
            if fresh:
                self._high = last
                stats.blocks_sent += fresh
                # Every block but the last of a transfer is full, and a
                # packet the kernel refused (a full buffer) is not sent.
                if written == 1:
                    stats.bytes_sent += len(unsent[0]) - 4
                else:
                    stats.bytes_sent += (
                        sum(map(len, unsent[written - fresh : written])) - 4 * fresh
                    )
        self._sent = window

    def _send(self, packets) -> int:
        """
        Send packets to the peer: the one place that counts
        C{packets_sent}.  A packet the kernel refuses (a full buffer) counts
        as lost, and the timer recovers it as any other loss.

        @return: how many the kernel took.
        """
        count = len(packets)
        if count == 1:
            try:
                self._write(packets[0], self.peer)
            except OSError:
                return 0
            written = 1
        elif count:
            written = self._port.send_window(packets, self.peer)
        else:
            # A read still pending: nothing on the wire to send again.
            return 0
        self.stats.packets_sent += written
        return written

    def _read_done(self, chunk: bytes, asked: int) -> None:
        self._reading = None
        if self.ended:
            return
        self._add_blocks(chunk, asked)
        if self._paused:
            return
        self._advance()
        self._arm(self._attempt, self._clock.seconds())

    def _read_failed(self, failure) -> None:
        self._reading = None
        if not self.ended and not failure.check(CancelledError):
            self._content_failed(failure.value, failure)

    def _content_failed(self, exc: BaseException, failure=None) -> None:
        code, message, expected = error_for(exc)
        if not expected:
            self._log.failure(
                "Reading {path!r} for {peer} failed",
                failure,
                path=self.stats.file_path,
                peer=self.peer,
            )
        self._send([wire.Error(code, message).encode()])
        self.stats.error_code, self.stats.error_message = code, message
        self._end(Outcome.REFUSED)

    # -- moving backward: the timer -----------------------------------------

    def _wait(self, attempt: int) -> float:
        """
        How long to wait for progress after the C{attempt}-th sending of
        the same packets: the round trip's RTO (doubled on each expiry, see
        L{RoundTrip.expired}) once the peer has proven its address and when
        the client did not negotiate a timeout; the schedule's wait
        otherwise.
        """
        if self._rtt is not None and self._proven:
            return self._rtt.rto
        return self._schedule[attempt]

    def _arm(self, attempt: int, now: float) -> None:
        """
        Expect progress within the wait for C{attempt}, counted from C{now}.

        Called on every ACK that brings progress, so it only moves the
        deadline; the timer itself moves only when it would fire too late.
        """
        if self.ended:
            return
        wait = self._wait(attempt)
        self.stats.rto = wait
        deadline = self._deadline = now + wait
        self._wake_by(deadline)

    def _wake_by(self, deadline: float) -> None:
        """
        Have the timer fire at C{deadline} at the latest.  A timer due later
        is replaced (the queue drops a cancelled one lazily).  It happens
        once in most transfers: the first wait, before the peer has proven
        its address, is the C{timeout} setting, and the round trip's RTO
        after is far shorter.
        """
        timer = self._timer
        if timer is not None:
            if timer.when <= deadline:
                return
            self._timers.cancel(timer)
        self._timer = self._timers.call_at(deadline, self._tick)

    def _tick(self) -> None:
        """
        The timer fired: wait on if the deadline moved, else time out.
        """
        self._timer = None
        now = self._clock.seconds()
        if now < self._deadline:
            self._timer = self._timers.call_at(self._deadline, self._tick)
        else:
            self._timed_out(now)

    def _timed_out(self, now: float) -> None:
        if self._paused:
            self._paused = False
            self._advance()
            self._arm(0, now)
            return
        if self._gap_pending:
            # Before calling it a gap, read what has arrived: on a busy host
            # the client's next ACK may be waiting while its timer ran out.
            self._port.read_pending()
            if self.ended or not self._gap_pending:
                return
            # No second partial ACK came: the window had a gap.
            self._resend_window(now)
            self._arm(self._attempt, now)
            return
        self._attempt += 1
        if not self._proven:
            given_up = self._attempt >= self._unproven_sends
        elif self._rtt is not None:
            given_up = now - self._last_progress >= self._patience
        else:
            given_up = self._attempt >= len(self._schedule)
        if given_up:
            self._end(Outcome.TIMEOUT)
            return
        if self._rtt is not None and self._proven:
            self._rtt.expired()
        self._flight_clean = False
        self._per_block = False
        if self._oack is not None:
            self.stats.retransmits += self._send([self._oack])
        elif self._window == 1:
            # Everything on the wire and not acknowledged goes again.  While
            # a read is pending there may be nothing to resend: the wait
            # still counts, so a read that never returns ends the session.
            self.stats.retransmits += self._send(self._packets[: self._sent])
        elif self._attempt == 1 and self._sent > 1:
            # A tail loss probe (RFC 8985 section 7): a flight that draws
            # no ACK at all has most likely lost its last blocks, since a
            # loss before them would have drawn the client's ACK of the gap.
            # The last block alone completes the client's window, which it
            # then acknowledges; a client that has nothing acknowledges
            # where it is, and the window goes again from there.  Resending
            # the whole flight instead would send the window twice for one
            # lost block.  A loss all the same: the next window waits (see
            # _slow_down).
            self._slow_down()
            self.stats.retransmits += self._send([self._packets[self._sent - 1]])
        else:
            self._resend_window(now)
            self._blind = True
        self._arm(self._attempt, now)

    # -- everything else ----------------------------------------------------

    def _wire_block(self, block: int) -> int:
        """
        The 16-bit number a block carries on the wire.
        """
        if self._rollover == 0:
            return block & 0xFFFF
        return (block - 1) % 0xFFFF + 1 if block else 0

    def _stray(self, datagram: bytes, addr) -> None:
        """
        Answer a datagram from another address or port with ERROR 5 (RFC
        1350 section 4), if C{on_stray} says so, and unless it is itself an
        ERROR, which is never answered (two servers must not bounce errors
        off each other).  Not this transfer's packet: it counts in no figure
        of it.
        """
        if self._on_stray(addr) and not _is_error(datagram):
            try:
                self._port.write(_UNKNOWN_TID, addr)
            except OSError:
                pass

    def _peer_error(self, datagram: bytes) -> None:
        if self.ended:
            return
        try:
            error = wire.decode(datagram)
        except wire.DecodeError:
            error = wire.Error(wire.ErrorCode.NOT_DEFINED, "")
        self.stats.error_code = error.code
        self.stats.error_message = error.message
        # An ERROR in answer to the OACK is how PXE ROMs end a size probe.
        probe = self._oack is not None
        self._end(Outcome.PROBE if probe else Outcome.PEER_ERROR)

    def abort(self, message: str = "Transfer aborted") -> None:
        """
        End the transfer now, telling the peer with ERROR 0 and C{message}.
        """
        if self.ended:
            return
        self._send([wire.Error(wire.ErrorCode.NOT_DEFINED, message).encode()])
        self.stats.error_code = wire.ErrorCode.NOT_DEFINED
        self.stats.error_message = message
        self._end(Outcome.ABORTED)

    def evict(self, reason: str) -> None:
        """
        End a transfer whose peer never acknowledged anything, to make room
        for another: nothing is sent (the peer may be forged), and its stats
        say why.
        """
        if self.ended:
            return
        self.stats.error_message = reason
        self._end(Outcome.EVICTED)

    def not_started(self, message: str) -> None:
        """
        End a transfer that never got a port (its server is out of
        descriptors, or the address went away): nothing is sent, and its
        stats say why, for the log line and the session callbacks.
        """
        self.stats.error_code = wire.ErrorCode.NOT_DEFINED
        self.stats.error_message = message
        self._end(Outcome.REFUSED)

    def _end(self, outcome: str) -> None:
        """
        Let go of everything: timer, pending read, response, port.
        """
        if self.ended:
            return
        self.ended = True
        self.stats.outcome = outcome
        self.stats.end_time = self._clock.seconds()
        if self._timer is not None:
            self._timers.cancel(self._timer)
            self._timer = None
        self._packets = []
        if self._reading is not None:
            self._reading.cancel()
        try:
            self._response.close()
        except Exception:
            self._log.failure(
                "Closing the response for {path!r} failed", path=self.stats.file_path
            )
        if self._port is not None:
            self._port.stopListening()
            self._port = self._write = None
        self._on_end(self)
