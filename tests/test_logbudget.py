"""
L{tftpd_tx.logbudget}: lines up to a rate, a summary for the rest.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.logbudget import PERIOD, LogBudget


class LogBudgetTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.summaries = []
        self.budget = LogBudget(
            self.clock, lambda held, period: self.summaries.append((dict(held), period))
        )

    def test_under_the_rate_everything_is_logged(self):
        """
        Up to the rate, every line may be logged and nothing is summed up.
        """
        assert [self.budget.allow("completed", 3) for _ in range(3)] == [True] * 3
        self.clock.advance(PERIOD)
        assert self.summaries == []
        assert self.clock.getDelayedCalls() == []

    def test_over_the_rate_one_summary_ends_the_period(self):
        """
        Past the rate, lines are held back and counted by kind; one summary
        comes at the end of the period, then the budget starts again.
        """
        allowed = [self.budget.allow("completed", 2) for _ in range(5)]
        allowed.append(self.budget.allow("timeout", 2))
        assert allowed == [True, True, False, False, False, False]
        assert self.summaries == []
        self.clock.advance(PERIOD)
        assert self.summaries == [({"completed": 3, "timeout": 1}, PERIOD)]
        assert self.clock.getDelayedCalls() == []
        assert self.budget.allow("completed", 2)

    def test_no_limit(self):
        """
        A rate of 0 lets every line through and schedules nothing.
        """
        assert all(self.budget.allow("completed", 0) for _ in range(1000))
        assert self.clock.getDelayedCalls() == []

    def test_flush(self):
        """
        Flushing writes the summary at once and leaves no timer behind (a
        server that stops leaves no DelayedCall).
        """
        for _ in range(3):
            self.budget.allow("refused", 1)
        self.budget.flush()
        assert self.summaries == [({"refused": 2}, PERIOD)]
        assert self.clock.getDelayedCalls() == []
        self.budget.flush()
        assert len(self.summaries) == 1
