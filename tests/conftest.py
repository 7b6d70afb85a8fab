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


@pytest.fixture(autouse=True)
def _threads_back_to_one():
    """The CLI commands choose their own thread count (``--threads``, or the idle CPUs now): put it back
    after each test, so one test's choice never changes how later tests sum (or how fast they run)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model preset (a module may override it with its own `tiny`)."""
    return get_preset("tiny")


@pytest.fixture(scope="module")
def cli_bundle():
    """The tiny editor bundle that ``--preset tiny-test`` loads in the CLI tests (one per module)."""
    from test_pipeline import tiny_bundle

    return tiny_bundle()


@pytest.fixture
def tiny_test_preset(monkeypatch, cli_bundle):
    """``--preset tiny-test`` loads `cli_bundle`; the returned list records the files of every load."""
    from bundle_loaders import register_counting_loader

    return register_counting_loader(monkeypatch, "tiny-test", cli_bundle)
