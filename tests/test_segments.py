"""
L{tftpd_tx.segments.Segmenter}: which datagrams of a window go in segmented
sends, and what happens when the kernel refuses one or its buffer is full.
"""

from __future__ import annotations

import errno
import socket

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tftpd_tx.segments import MAX_SEGMENTS, UDP_SEGMENT, Segmenter

ADDR = ("192.0.2.1", 40000)


class _Sendmsg:
    """
    A socket's C{sendmsg} that records its calls, or raises C{error}.
    """

    def __init__(self, error: int | None = None) -> None:
        self.calls = []
        self.error = error

    def __call__(self, buffers, control, flags, addr):
        if self.error is not None:
            raise OSError(self.error, "refused")
        self.calls.append((len(buffers), control, addr))
        return sum(map(len, buffers))


class SegmenterTests(SynchronousTestCase):
    def setUp(self):
        if UDP_SEGMENT is None:
            raise SkipTest("no UDP segmentation offload on this platform")

    def test_calls_of_at_most_64(self):
        """
        130 equal datagrams, the last shorter, go in calls of 64, 64 and 2,
        each with the segment size beside the control given.
        """
        sendmsg = _Sendmsg()
        window = [b"x" * 516] * 129 + [b"x" * 10]
        control = [(socket.IPPROTO_IP, 8, b"source")]
        self.assertEqual(Segmenter().send(sendmsg, window, control, ADDR), (130, 130))
        self.assertEqual([count for count, _, _ in sendmsg.calls], [MAX_SEGMENTS, MAX_SEGMENTS, 2])
        for _, sent_control, addr in sendmsg.calls:
            self.assertEqual(sent_control[0], control[0])
            self.assertEqual(sent_control[1][:2], (socket.SOL_UDP, UDP_SEGMENT))
            self.assertEqual(addr, ADDR)

    def test_left_to_the_caller(self):
        """
        One datagram, or a window whose datagrams differ in size before the
        last, is left whole to the caller.
        """
        sendmsg = _Sendmsg()
        for window in ([b"x" * 516], [b"x" * 516, b"x" * 10, b"x" * 516]):
            self.assertEqual(Segmenter().send(sendmsg, window, (), ADDR), (0, 0))
        self.assertEqual(sendmsg.calls, [])

    def test_refused_once_refused_for_good(self):
        """
        A route or device that cannot segment refuses the send: the rest of
        the window, and every later one, is the caller's to send singly.
        """
        segmenter = Segmenter()
        window = [b"x" * 516] * 4
        self.assertEqual(segmenter.send(_Sendmsg(errno.EMSGSIZE), window, (), ADDR), (0, 0))
        self.assertFalse(segmenter.segmenting)
        sendmsg = _Sendmsg()
        self.assertEqual(segmenter.send(sendmsg, window, (), ADDR), (0, 0))
        self.assertEqual(sendmsg.calls, [])

    def test_full_buffer(self):
        """
        A full buffer loses that call's datagrams (they count as lost, the
        timer recovers them) and segmenting goes on.
        """
        segmenter = Segmenter()
        window = [b"x" * 516] * 4
        self.assertEqual(segmenter.send(_Sendmsg(errno.ENOBUFS), window, (), ADDR), (4, 0))
        self.assertTrue(segmenter.segmenting)
