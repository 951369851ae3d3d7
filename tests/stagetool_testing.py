"""Shared pieces of the Stagetool tests (not a test module itself)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread: on a busy machine two threads spin against each other (tens of times slower).

    Autouse in every module that imports it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
