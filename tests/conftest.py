"""
Run every test in a fresh temporary directory, so that trial's C{mktemp()}
and anything a test writes relative to the working directory stay out of
the checkout.
"""

import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
