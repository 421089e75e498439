"""Shared by the application's tests: tiny studies run on one torch thread (faster on 2
cores, and the thread count is restored for the tests after)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
