"""Shared test set-up."""

import pytest
import torch

from instructav2av.models.configs import get_preset


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """The test models are tiny: a second thread only adds hand-offs, and on a shared 2-core
    machine spinning threads make them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model preset (a module may override it with its own `tiny`)."""
    return get_preset("tiny")
