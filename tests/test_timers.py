"""
The retransmit deadlines of many transfers behind one reactor call.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.timers import TimerQueue


class TimerQueueTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.queue = TimerQueue(self.clock)
        self.fired = []

    def at(self, when, name):
        return self.queue.call_at(when, lambda: self.fired.append((name, self.clock.seconds())))

    def test_one_reactor_call_for_many_deadlines(self):
        """
        A thousand deadlines make one pending reactor call, and each action
        runs when its deadline comes, in order; equal deadlines run in the
        order they were set.
        """
        for index in range(1000):
            self.at(1.0 + (index % 10) / 10, index)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [(index, 1.0) for index in range(0, 1000, 10)])
        self.clock.pump([0.1] * 9)
        self.assertEqual(len(self.fired), 1000)
        self.assertEqual([name for name, _ in self.fired[100:200]], list(range(1, 1000, 10)))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.queue), 0)

    def test_sooner_deadline_moves_the_call(self):
        """
        A deadline sooner than every other is met on time.
        """
        self.at(5.0, "late")
        self.at(0.5, "soon")
        self.clock.advance(0.5)
        self.assertEqual(self.fired, [("soon", 0.5)])
        self.clock.advance(4.5)
        self.assertEqual(self.fired, [("soon", 0.5), ("late", 5.0)])

    def test_cancelled_timer_never_fires(self):
        """
        A cancelled timer does not run, and cancelling the last live one
        leaves no reactor call behind; cancelling twice is harmless.
        """
        first = self.at(1.0, "first")
        second = self.at(2.0, "second")
        self.queue.cancel(first)
        self.queue.cancel(first)
        self.assertFalse(first.active)
        self.assertTrue(second.active)
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [])
        self.queue.cancel(second)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5.0)
        self.assertEqual(self.fired, [])

    def test_deadline_set_by_an_action_runs(self):
        """
        An action may set another deadline, however near (a transfer
        re-arms its timer from its own timeout): it runs in its turn.
        """

        def again():
            self.fired.append(("again", self.clock.seconds()))
            if len(self.fired) < 3:
                self.queue.call_at(self.clock.seconds() + 0.25, again)

        self.queue.call_at(1.0, again)
        self.clock.pump([1.0, 0.25, 0.25, 0.25])
        self.assertEqual(self.fired, [("again", 1.0), ("again", 1.25), ("again", 1.5)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_action_may_cancel_another_due_one(self):
        """
        A due timer cancelled by an action run before it in the same pass
        does not run.
        """
        victim = []
        self.queue.call_at(1.0, lambda: self.queue.cancel(victim[0]))
        victim.append(self.at(1.0, "victim"))
        self.at(1.0, "other")
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [("other", 1.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_many_cancelled_are_dropped(self):
        """
        Cancelled timers do not pile up in the heap: replacing deadlines
        many times over keeps it about as large as the live ones.
        """
        timers = [self.at(10.0, index) for index in range(10)]
        for round_ in range(100):
            for index, timer in enumerate(timers):
                self.queue.cancel(timer)
                timers[index] = self.at(10.0 - round_ / 100, index)
        self.assertLessEqual(len(self.queue._heap), 10 + 2 * TimerQueue.COMPACT_AFTER)
        self.clock.advance(10.0)
        self.assertEqual(sorted(name for name, _ in self.fired), list(range(10)))

    def test_failing_action_spares_the_others(self):
        """
        An action that raises is logged, and the others due with it still
        run, as does the next deadline.
        """

        def broken():
            raise ZeroDivisionError("timer bug")

        self.at(1.0, "before")
        self.queue.call_at(1.0, broken)
        self.at(1.0, "after")
        self.at(2.0, "later")
        self.clock.advance(1.0)
        self.assertEqual(self.fired, [("before", 1.0), ("after", 1.0)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.fired[-1], ("later", 2.0))
