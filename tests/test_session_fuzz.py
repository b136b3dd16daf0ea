"""
The transfer state machine under random interleavings.

Hypothesis drives a L{ReadSession} on the fake reactor with ACKs (new,
duplicate, stale, future, wrapped), strays from high and low ports, ERRORs,
noise, timer ticks, slow reads and full socket buffers, and after every step
checks what the session sent, or tried to send when the kernel refused it,
against the rules it keeps:

 - DATA goes only when the transfer starts, when an ACK brings progress,
   when the timer fires or when a slow read comes in; never for a stale,
   future or stray ACK, and never for a duplicate one in lock-step (the
   Sorcerer's Apprentice bug); in a window, a repeated ACK of the last
   block acknowledged may say a block was lost, and may send the window
   again from the first block not acknowledged;
 - the DATA of one step is a run of consecutive blocks, in order, inside
   the window after the last block acknowledged, of what the content has
   handed over; it starts the window, or goes on where the window stopped;
   every payload is the content at its block's offset, and block numbers
   wrap as the rollover says;
 - lock-step, and while the OACK waits for its ACK, the model says exactly
   what goes when: the next block after an ACK, the same packet again at
   each deadline of the schedule, the end after its last wait;
 - a peer that has acknowledged nothing gets two datagrams at most, none
   larger than the OACK or a 512-byte block;
 - a stray gets ERROR 5 unless it is an ERROR or comes from a port below
   1024, and changes nothing;
 - the transfer ends exactly once, as the model expects and within its
   schedule; then nothing is sent, its port and response are closed and no
   timer is left; while it runs it holds exactly one timer;
 - its figures agree with the datagrams sent.
"""

from __future__ import annotations

import collections
import functools
import math
import struct
from dataclasses import dataclass


from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.content import FileNotFound
from tftpd_tx.options import Negotiated
from tftpd_tx.server import LOWEST_CLIENT_PORT
from tftpd_tx.session import UNPROVEN_SENDS, ReadSession, backoff_schedule
from tftpd_tx.stats import Outcome, SessionStats
from tftpd_tx.testing import FakeUDPPort, FakeUDPReactor

PEER = ("192.0.2.7", 2000)
#: Strangers: the peer's host from other ports, high and low, and another
#: host from the peer's port and from a high one.
STRANGERS = [
    ("192.0.2.7", 2001),
    ("192.0.2.7", 69),
    ("192.0.2.7", 1023),
    ("198.51.100.9", PEER[1]),
    ("198.51.100.9", 40000),
]
#: Clock steps, exact in binary floating point (as are the schedules), so
#: that the model's deadlines and the session's agree to the last bit;
#: 1/1024 s is below the read-ahead interval, so fast transfers are
#: exercised too.
TICKS = [0.0, 1 / 1024, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 60.0]
#: The largest datagram an unproven peer may get, but for the OACK: a DATA
#: of RFC 1350's 512 bytes.
FIRST_REPLY_MOST = 4 + 512


def wire_number(block: int, rollover: int) -> int:
    """
    The 16-bit number of a block on the wire: the block modulo 65536, or
    with rollover 1 the sequence 1 .. 65535, 1 .. (block 0 is the OACK).
    """
    if rollover == 0 or block == 0:
        return block % 0x10000
    return (block - 1) % 0xFFFF + 1


def ack(number: int) -> bytes:
    return struct.pack("!HH", 4, number)


def is_ack_shaped(datagram: bytes) -> bool:
    """
    Whether a datagram is a well-formed ACK: four bytes, opcode 4.
    """
    return len(datagram) == 4 and datagram[:2] == b"\0\4"


def claims_error(datagram: bytes) -> bool:
    """
    Whether a datagram starts as an ERROR does, well-formed or not.
    """
    return datagram[:2] == b"\0\5"


class Content:
    """
    A response that answers each read at once or, when slow, with a
    Deferred the test fires or fails later.

    @ivar given: bytes handed to the session so far.
    @ivar finished: whether a read has come back short (the end).
    @ivar pending: the unanswered read, a C{(Deferred, size)}, or L{None}.
    """

    def __init__(self, content: bytes, slow: bool) -> None:
        self.content = content
        self.slow = slow
        self.given = 0
        self.finished = False
        self.pending: tuple[Deferred, int] | None = None
        self.closed = 0

    def read(self, n: int):
        if self.slow:
            reading = Deferred()
            self.pending = (reading, n)
            return reading
        return self._take(n)

    def _take(self, n: int) -> bytes:
        chunk = self.content[self.given : self.given + n]
        self.given += len(chunk)
        self.finished = len(chunk) < n
        return chunk

    def answer(self) -> None:
        """
        The pending read comes in.
        """
        (reading, n), self.pending = self.pending, None
        reading.callback(self._take(n))

    def fail(self) -> None:
        """
        The pending read fails: the file went away.
        """
        (reading, _), self.pending = self.pending, None
        reading.errback(FileNotFound("gone"))

    def size(self) -> int:
        return len(self.content)

    def close(self) -> None:
        self.closed += 1


@dataclass(frozen=True)
class Transfer:
    """
    What one example serves, and how.
    """

    size: int
    negotiated: Negotiated
    schedule: tuple[float, ...]
    rollover: int
    slow: bool
    #: For transfers that cross block 65535: how many blocks short of it
    #: the run starts its random steps (see L{WrappingMachine}).
    lead: int = 0

    @functools.cached_property
    def content(self) -> bytes:
        return patterned(self.size)


def patterned(size: int) -> bytes:
    """
    C{size} bytes whose period (251) is no block size's, so that a payload
    taken at the wrong offset shows.
    """
    return (bytes(range(251)) * (size // 251 + 1))[:size]


schedules = st.builds(
    backoff_schedule,
    initial=st.sampled_from([0.25, 0.5, 1.0]),
    retries=st.integers(0, 4),
    factor=st.sampled_from([1.0, 2.0]),
    hold=st.sampled_from([None, 2.0, 6.0]),
)


@st.composite
def transfers(draw, kinds=("plain", "lock-step", "window")) -> Transfer:
    """
    A transfer of RFC 1350, or with an OACK in lock-step, or with an OACK
    and a window, whose content ends near a block or window boundary, on
    it, or anywhere in its first few windows.
    """
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        negotiated = Negotiated()
        blksize, windowsize = negotiated.blksize, negotiated.windowsize
    else:
        blksize = draw(st.sampled_from([8, 9, 16, 100, 512, 1428]))
        windowsize = 1 if kind == "lock-step" else draw(st.integers(2, 8))
        options = {"blksize": str(blksize), "windowsize": str(windowsize)}
        negotiated = Negotiated(blksize, windowsize, oack=options)
    unit = draw(st.sampled_from([blksize, windowsize * blksize]))
    size = draw(
        st.one_of(
            st.builds(
                lambda count, off: max(0, count * unit + off),
                st.integers(0, 4),
                st.sampled_from([-1, 0, 1]),
            ),
            st.integers(0, 4 * windowsize * blksize),
        )
    )
    return Transfer(
        size=size,
        negotiated=negotiated,
        schedule=draw(schedules),
        rollover=draw(st.sampled_from([0, 1])),
        slow=draw(st.booleans()),
    )


@st.composite
def wrapping_transfers(draw) -> Transfer:
    """
    A transfer of blocks of 8 bytes long enough to cross block 65535 by a
    few windows, started a little before the crossing.
    """
    windowsize = draw(st.sampled_from([32, 64]))
    blocks = 0xFFFF + draw(st.integers(0, 3 * windowsize))
    negotiated = Negotiated(8, windowsize, oack={"blksize": "8", "windowsize": str(windowsize)})
    return Transfer(
        size=8 * blocks + draw(st.integers(0, 7)),
        negotiated=negotiated,
        schedule=draw(schedules),
        rollover=draw(st.sampled_from([0, 1])),
        slow=False,
        lead=draw(st.integers(1, 2 * windowsize)),
    )


ack_numbers = st.one_of(
    st.integers(0, 0xFFFF), st.sampled_from([0, 1, 2, 0xFFFE, 0xFFFF])
)
errors = st.one_of(
    st.builds(
        lambda code, message: wire.Error(code, message).encode(),
        st.integers(0, 8),
        st.text(max_size=20),
    ),
    st.binary(max_size=30).map(lambda tail: b"\0\5" + tail),
)
noise = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"\0\4\0",
            b"\0\4\0\1\0",
            b"\0\3\0\1data",
            wire.ReadRequest("f", "octet").encode(),
            wire.OptionAck({"blksize": "8"}).encode(),
            bytes(range(256)) * 3,
        ]
    ),
).filter(lambda datagram: not is_ack_shaped(datagram) and not claims_error(datagram))


class AttemptsPort(FakeUDPPort):
    """
    A fake port that also records every datagram its protocol tried to
    send, those the kernel refused included.

    @ivar attempts: C{(datagram, address)} of every send, in order.
    """

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.attempts: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, datagram: bytes, addr=None) -> None:
        self.attempts.append((bytes(datagram), addr))
        super().write(datagram, addr)

    def send_window(self, datagrams, addr) -> int:
        self.attempts += [(bytes(datagram), addr) for datagram in datagrams]
        return super().send_window(datagrams, addr)


class SessionMachine(RuleBasedStateMachine):
    """
    One L{ReadSession} and the model of what it must do.

    The model holds the transfer's progress: C{acked}, the blocks
    acknowledged; C{sent_to}, the last block of the window on the wire;
    whether the OACK still waits for its ACK and whether the peer is
    proven.  While the model is exact (lock-step, or the OACK unanswered)
    it also holds the timer's deadline and the retransmissions so far, and
    each rule says what must be sent; in a window the rules of the module's
    docstring are checked instead.  Each rule acts, then L{observe} checks
    the step.
    """

    @initialize(transfer=transfers())
    def start(self, transfer: Transfer) -> None:
        self.begin(transfer)

    def begin(self, transfer: Transfer) -> None:
        negotiated = transfer.negotiated
        self.transfer = transfer
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.blocks = len(transfer.content) // self.blksize + 1
        self.first_reply = wire.OptionAck(negotiated.oack).encode() if negotiated.oack else None
        self.oack = self.first_reply
        self.acked = self.sent_to = self.attempt = 0
        self.deadline = transfer.schedule[0]
        self.last_progress = 0.0
        self.proven = False
        self.outcome = None
        self.ended_before = False
        self.last_ack = None
        self.unproven: list[bytes] = []
        # What reached the peer, counted: datagrams, ERRORs and the first
        # OACK, what the timer sent, and the payload bytes sent otherwise.
        self.figures = collections.Counter()
        self.acks_of_progress = 0
        self.reactor = FakeUDPReactor()
        self.content = Content(transfer.content, transfer.slow)
        self.ended_calls: list[ReadSession] = []
        self.strays_seen: list[tuple[str, int]] = []
        self.session = ReadSession(
            clock=self.reactor,
            peer=PEER,
            response=self.content,
            negotiated=negotiated,
            schedule=transfer.schedule,
            rollover=transfer.rollover,
            stats=SessionStats(peer=PEER, server_addr=("192.0.2.1", 69), file_path="f"),
            on_end=self.ended_calls.append,
            on_stray=self.answer_stray,
        )
        self.port = AttemptsPort(self.reactor, self.session, 50000, "192.0.2.1")
        self.session.makeConnection(self.port)
        self.observe("start", [self.oack] if self.oack else self.window())
        if self.windowsize > 1:
            # The OACK's ACK, so that the steps start with a window on the
            # wire: before it a window's transfer is a lock-step one's.
            self.peer_ack(0)

    def answer_stray(self, addr) -> bool:
        """
        The server's rule for strays: answer none from a port below 1024.
        """
        self.strays_seen.append(addr)
        return addr[1] >= LOWEST_CLIENT_PORT

    # -- the model ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.outcome is None

    @property
    def exact(self) -> bool:
        """
        Whether the model says exactly what is sent when.
        """
        return self.windowsize == 1 or self.oack is not None

    def now(self) -> float:
        return self.reactor.seconds()

    def packet(self, block: int) -> bytes:
        start = (block - 1) * self.blksize
        payload = self.transfer.content[start : start + self.blksize]
        return struct.pack("!HH", 3, wire_number(block, self.transfer.rollover)) + payload

    def available(self) -> int:
        """
        The blocks the content has handed over so far.
        """
        if self.content.finished:
            return self.blocks
        return self.content.given // self.blksize

    def window(self) -> list[bytes]:
        """
        The blocks of the window not on the wire yet that the content has
        handed over: they leave now, in order.
        """
        last = min(self.acked + self.windowsize, self.available())
        return [self.packet(block) for block in range(self.sent_to + 1, last + 1)]

    def acknowledged(self, number: int) -> int | None:
        """
        The block an ACK with this wire number acknowledges for the first
        time: the OACK's (0) while it waits, else a block on the wire;
        L{None} for a duplicate, stale or future ACK.
        """
        if self.oack is not None:
            return 0 if number == 0 else None
        block = self.in_window(number)
        return block if block is not None and block <= self.sent_to else None

    def in_window(self, number: int) -> int | None:
        """
        The block of the window after the last one acknowledged that
        carries the wire number C{number}, or L{None}.
        """
        first = self.acked + 1
        if self.transfer.rollover == 0:
            offset = (number - first) % 0x10000
        elif number == 0:
            return None
        else:
            offset = (number - wire_number(first, 1)) % 0xFFFF
        return first + offset if offset < self.windowsize else None

    def run_of_blocks(self, packets: list[bytes], modelled: bool) -> list[int]:
        """
        The blocks of the DATA among C{packets}, checked: each is in the
        window after the last block acknowledged, of what the content has
        handed over, with the content at its offset (unless the model made
        them: C{modelled}), and they follow each other in order.
        """
        blocks = []
        for datagram in packets:
            if datagram[:2] != b"\0\3":
                continue
            number = struct.unpack("!H", datagram[2:4])[0]
            block = self.in_window(number)
            assert block is not None, f"DATA {number} is outside the window after {self.acked}"
            assert block <= self.available(), f"DATA {block} was never read"
            assert modelled or datagram == self.packet(block), f"DATA {block}: wrong bytes"
            blocks.append(block)
        assert blocks == list(range(blocks[0], blocks[0] + len(blocks))) if blocks else True, (
            f"DATA out of order: {blocks}"
        )
        return blocks

    def observe(self, cause: str, expected: list[bytes] | None, to_strangers=()) -> None:
        """
        Check the step that just ran: what it tried to send the peer
        (C{expected}, exactly, when the model is exact; else by the rules of
        windows), what it sent strangers (the ERROR codes C{to_strangers}),
        and that nothing at all went after the end.

        @param cause: what may make the session send: C{"start"},
            C{"progress"} (an ACK of something new), C{"duplicate"} (an
            ACK of the last block acknowledged again), C{"timer"},
            C{"read"} (a slow read came in), or C{"other"}.
        """
        attempts, self.port.attempts[:] = list(self.port.attempts), []
        delivered, self.port.sent[:] = list(self.port.sent), []
        if self.ended_before:
            assert attempts == [], f"sent after the transfer ended: {attempts}"
        mine = [datagram for datagram, addr in attempts if addr == PEER]
        theirs = [wire.decode(datagram).code for datagram, addr in attempts if addr != PEER]
        assert theirs == list(to_strangers), (theirs, to_strangers)
        if cause == "other" or (cause == "duplicate" and self.windowsize == 1):
            assert mine == [], f"sent for a {cause} step: {mine}"
        if expected is not None:
            assert mine == expected, (cause, mine, expected)
        blocks = self.run_of_blocks(mine, modelled=expected is not None)
        if blocks and self.running:
            starts = {self.acked + 1}
            if cause in ("progress", "read", "start"):
                starts.add(self.sent_to + 1)
            if cause == "timer" and blocks == [self.sent_to] and self.sent_to > self.acked + 1:
                # The tail loss probe: the last block of the flight alone.
                starts.add(self.sent_to)
            assert blocks[0] in starts, f"a {cause} step sent {blocks}, not from {starts}"
        if blocks:
            self.sent_to = max(self.sent_to, blocks[-1])
        if not self.exact and self.running and self.session.ended:
            # In a window the model learns the end from the session, and
            # only the timer may end it so.
            assert cause == "timer", f"a {cause} step ended the transfer"
            self.outcome = Outcome.TIMEOUT
        sent = [datagram for datagram, addr in delivered if addr == PEER]
        if not self.proven:
            self.unproven += sent
        figures = self.figures
        for datagram in sent:
            figures["datagrams"] += 1
            if datagram[:2] == b"\0\5" or (cause == "start" and datagram == self.first_reply):
                figures["not blocks"] += 1
            elif cause == "timer":
                figures["by the timer"] += 1
            elif datagram[:2] == b"\0\3":
                figures["first payload"] += len(datagram) - 4
            if datagram[:2] == b"\0\3":
                figures["payload"] += len(datagram) - 4
        self.ended_before = not self.running

    # -- the peer -----------------------------------------------------------

    def peer_ack(self, number: int) -> None:
        """
        The peer sends ACK C{number}: new progress brings the next window
        (or the end, after the last block); anything else brings nothing,
        but for a repeated ACK in a window.
        """
        exact = self.exact
        block = self.acknowledged(number)
        repeated = self.oack is None and number == wire_number(self.acked, self.transfer.rollover)
        self.port.deliver(ack(number), PEER)
        self.last_ack = number
        # Any ACK proves the peer is where it says: it got a reply there.
        self.proven = True
        if block is None:
            self.observe("duplicate" if repeated else "other", [] if exact else None)
            return
        self.acks_of_progress += 1
        self.oack = None
        self.acked = block
        self.last_progress = self.now()
        if block == self.blocks:
            self.outcome = Outcome.COMPLETED
            self.observe("progress", [])
            return
        self.attempt = 0
        self.deadline = self.now() + self.transfer.schedule[0]
        if exact or self.sent_to == block:
            # Lock-step, the ACK of the OACK, or of all that was sent: the
            # next window goes at once, or after a loss on the timer, when
            # the back-off in time (RFC 7440 section 6) has passed.
            self.sent_to = block
            paused = self.windowsize > 1 and block > 0 and not self.port.attempts
            self.observe("progress", [] if paused else self.window())
        else:
            self.observe("progress", None)

    @precondition(lambda self: self.running)
    @rule(pick=st.integers(0, 63))
    def ack_new(self, pick: int) -> None:
        """
        An ACK that brings progress when anything is on the wire: the
        OACK's, or one of the blocks sent (those after it lost).
        """
        if self.oack is not None:
            self.peer_ack(0)
            return
        block = self.acked + 1 + pick % max(1, self.sent_to - self.acked)
        self.peer_ack(wire_number(block, self.transfer.rollover))

    @precondition(lambda self: self.running)
    @rule(offset=st.integers(-2, 9))
    def ack_near_window(self, offset: int) -> None:
        """
        An ACK for a block near the window: a new one, the last one again
        (offset 0), a stale one or one not sent yet.
        """
        self.peer_ack(wire_number(max(0, self.acked + offset), self.transfer.rollover))

    @precondition(lambda self: self.running)
    @rule(number=ack_numbers)
    def ack_any(self, number: int) -> None:
        """
        An ACK with any number, those around the wrap more often.
        """
        self.peer_ack(number)

    @precondition(lambda self: self.running and self.last_ack is not None)
    @rule()
    def ack_again(self) -> None:
        """
        The peer's last ACK, duplicated on the way.
        """
        self.peer_ack(self.last_ack)

    @precondition(lambda self: self.running)
    # One in four an ERROR, so that most transfers live to meet the rest.
    @rule(datagram=st.one_of(noise, noise, noise, errors))
    def peer_datagram(self, datagram: bytes) -> None:
        """
        Anything but an ACK from the peer changes nothing, except an ERROR
        (well-formed or not): it ends the transfer, as a size probe if it
        answers the OACK.
        """
        self.port.deliver(datagram, PEER)
        if claims_error(datagram):
            self.outcome = Outcome.PROBE if self.oack is not None else Outcome.PEER_ERROR
        self.observe("other", [])

    @precondition(lambda self: self.running)
    @rule(
        stranger=st.sampled_from(STRANGERS),
        datagram=st.one_of(ack_numbers.map(ack), errors, noise),
    )
    def stray(self, stranger, datagram: bytes) -> None:
        """
        A datagram from anyone else gets ERROR 5, unless it is an ERROR or
        comes from a port below 1024, and changes nothing.
        """
        seen = len(self.strays_seen)
        self.port.deliver(datagram, stranger)
        assert self.strays_seen[seen:] == [stranger]
        answered = stranger[1] >= LOWEST_CLIENT_PORT and not claims_error(datagram)
        self.observe("other", [], [wire.ErrorCode.UNKNOWN_TID] if answered else [])

    # -- time, content, kernel ----------------------------------------------

    @rule(seconds=st.sampled_from(TICKS))
    def tick(self, seconds: float) -> None:
        """
        Time passes, the timer firing on the way as often as it is due.
        """
        end = self.now() + seconds
        while True:
            due = [call.getTime() for call in self.reactor.getDelayedCalls()]
            moment = min([end] + [when for when in due if when <= end])
            self.reactor.advance(moment - self.now())
            if self.now() < moment:
                self.reactor.advance(math.ulp(moment))
            self.timer_moment()
            if moment >= end:
                return

    def timer_moment(self) -> None:
        """
        The clock reached a moment when the timer may fire.  Once the
        deadline has passed, the timer sends again what is on the wire (the
        OACK while it waits for its ACK), or gives up after the last wait of
        the schedule: after the second sending if the peer never
        acknowledged anything.
        """
        schedule = self.transfer.schedule
        if not self.running or not self.exact:
            self.observe("timer", None if self.running else [])
            if self.running and self.proven:
                held = self.now() - self.last_progress
                assert held <= sum(schedule) + schedule[0], f"no progress for {held} s"
            return
        if self.deadline > self.now():
            self.observe("timer", [])
            return
        self.attempt += 1
        tries = len(schedule) if self.proven else min(UNPROVEN_SENDS, len(schedule))
        if self.attempt >= tries:
            self.outcome = Outcome.TIMEOUT
            self.observe("timer", [])
            return
        self.deadline = self.now() + schedule[self.attempt]
        if self.oack is not None:
            self.observe("timer", [self.oack])
        else:
            resent = [self.packet(block) for block in range(self.acked + 1, self.sent_to + 1)]
            self.observe("timer", resent)

    @precondition(lambda self: self.content.pending is not None)
    @rule(fails=st.sampled_from([False, False, False, True]))
    def slow_read(self, fails: bool) -> None:
        """
        A slow read comes in: what the window lacks of it leaves, and the
        wait starts again.  Or it fails: the peer gets that ERROR and the
        transfer ends.  After the end it was cancelled, and is ignored.
        """
        if fails:
            self.content.fail()
        else:
            self.content.answer()
        if not self.running:
            self.observe("read", [])
        elif fails:
            self.outcome = Outcome.REFUSED
            self.observe("read", [wire.Error(1, "gone").encode()])
        else:
            self.deadline = self.now() + self.transfer.schedule[self.attempt]
            self.last_progress = self.now()
            self.observe("read", self.window() if self.exact else None)

    @precondition(lambda self: self.running)
    @rule(refuse=st.booleans())
    def socket_buffer(self, refuse: bool) -> None:
        """
        The kernel starts or stops refusing sends (a full buffer): what it
        refuses is lost, as on the network.
        """
        self.port.refuse = refuse
        self.observe("other", [])

    # -- what holds after every step ----------------------------------------

    @invariant()
    def reply_bound(self) -> None:
        """
        Until the peer acknowledges something it gets two datagrams at
        most, none larger than the OACK or a 512-byte block.
        """
        assert len(self.unproven) <= UNPROVEN_SENDS, self.unproven
        for datagram in self.unproven:
            assert len(datagram) <= FIRST_REPLY_MOST or datagram == self.first_reply

    @invariant()
    def ends_once_and_cleanly(self) -> None:
        """
        The transfer ends once, as the model says; then its port is closed,
        its response closed and no timer is left.  While it runs it holds
        exactly one timer.
        """
        stats = self.session.stats
        assert stats.outcome == self.outcome
        assert self.session.ended == (not self.running)
        assert self.ended_calls == ([] if self.running else [self.session])
        assert self.port.listening == self.running
        assert self.content.closed == (0 if self.running else 1)
        assert len(self.reactor.getDelayedCalls()) == (1 if self.running else 0)

    @invariant()
    def figures_agree(self) -> None:
        """
        The session's figures are the datagrams it sent its peer (ERROR 5s
        to strangers are not the transfer's): each is a first OACK, an
        ERROR, a block sent or a retransmission; in lock-step the
        retransmissions are what the timer sent.
        """
        stats = self.session.stats
        assert self.session.blocks_acknowledged == self.acked
        figures = self.figures
        assert stats.packets_acked == self.acks_of_progress
        assert stats.packets_sent == figures["datagrams"]
        assert stats.packets_sent == (
            stats.blocks_sent + stats.retransmits + figures["not blocks"]
        )
        assert stats.bytes_sent <= figures["payload"]
        if self.windowsize == 1:
            assert stats.retransmits == figures["by the timer"]
            assert stats.bytes_sent == figures["first payload"]


class WindowMachine(SessionMachine):
    """
    The same rules for windowed transfers only: the newest code, and the
    one with the most paths.
    """

    @initialize(transfer=transfers(kinds=("window",)))
    def start(self, transfer: Transfer) -> None:
        self.begin(transfer)


class WrappingMachine(SessionMachine):
    """
    The same rules around block 65535: the transfer is taken window by
    window to a few blocks short of it, then the random steps start.
    """

    @initialize(transfer=wrapping_transfers())
    def start(self, transfer: Transfer) -> None:
        self.begin(transfer)
        target = 0xFFFF - transfer.lead
        while self.acked < target:
            block = min(self.sent_to, target)
            self.peer_ack(wire_number(block, transfer.rollover))


class ReadSessionFuzzTests(SynchronousTestCase):
    """
    Random interleavings of everything a transfer can meet.
    """

    def test_small_transfers(self):
        """
        Transfers of up to a few windows, with or without an OACK, fast or
        slow content, keep every rule whatever happens in whatever order.
        """
        run_state_machine_as_test(
            SessionMachine,
            settings=settings(
                max_examples=200, stateful_step_count=50, deadline=None, database=None
            ),
        )

    def test_windows(self):
        """
        Windowed transfers keep every rule: ACKs inside the window, lost
        blocks, repeated ACKs, the timer and slow content in any order.
        """
        run_state_machine_as_test(
            WindowMachine,
            settings=settings(
                max_examples=100, stateful_step_count=40, deadline=None, database=None
            ),
        )

    def test_transfers_across_block_65535(self):
        """
        Around the wrap of the 16-bit block number, with rollover 0 or 1,
        every rule holds too: ACKs match the blocks they name across it.
        """
        run_state_machine_as_test(
            WrappingMachine,
            settings=settings(
                max_examples=6,
                stateful_step_count=30,
                deadline=None,
                database=None,
                # Each example first takes 65,000 blocks across: too slow
                # to shrink, and a failing run of 30 steps reads as it is.
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
            ),
        )


class KnownBugTests(SynchronousTestCase):
    """
    What the machines above found, each reduced to its smallest case; the
    machines leave these steps out until they are fixed.
    """

    def start(self, content: bytes, negotiated: Negotiated, rollover: int = 0):
        self.reactor = FakeUDPReactor()
        self.session = ReadSession(
            clock=self.reactor,
            peer=PEER,
            response=Content(content, slow=False),
            negotiated=negotiated,
            schedule=(1.0, 1.0),
            rollover=rollover,
            stats=SessionStats(peer=PEER, server_addr=("192.0.2.1", 69), file_path="f"),
        )
        return self.reactor.listenUDP(0, self.session, interface="192.0.2.1")

    def test_ack_zero_names_no_block_under_rollover_1(self):
        """
        With rollover 1 no DATA block is numbered 0: while block 65535 is on
        the wire, an ACK 0 acknowledges nothing and sends nothing.
        """
        negotiated = Negotiated(8, 64, oack={"blksize": "8", "windowsize": "64"})
        port = self.start(patterned(8 * 0x10040), negotiated, rollover=1)
        port.deliver(ack(0), PEER)
        while self.session.blocks_acknowledged < 0xFFFF - 64:
            port.deliver(ack(wire_number(self.session.blocks_acknowledged + 64, 1)), PEER)
        port.take()
        acknowledged = self.session.blocks_acknowledged
        port.deliver(ack(0), PEER)
        self.assertEqual(port.take(), [])
        self.assertEqual(self.session.blocks_acknowledged, acknowledged)

    def test_refused_oack_retransmission_is_not_counted(self):
        """
        An OACK retransmission the kernel refuses (a full buffer) is lost,
        as a refused DATA is: it counts in neither C{packets_sent} nor
        C{retransmits}.
        """
        port = self.start(b"", Negotiated(8, oack={"blksize": "8"}))
        port.refuse = True
        self.reactor.advance(1.0)
        stats = self.session.stats
        self.assertEqual((stats.packets_sent, stats.retransmits), (1, 0))
