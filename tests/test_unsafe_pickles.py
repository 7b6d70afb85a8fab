"""A .pt/.pth file that pickles more than tensors is refused with our message (issue 11, item 18).

torch's own refusal tells the user to load with ``weights_only=False`` or to allow-list the object,
i.e. to run code from the file. That advice must never reach the user, whichever loader reads it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instructav2av.cli import main
from instructav2av.weights.io import CheckpointError, CheckpointFile, load_torch_tensors
from instructav2av.weights.text_encoder import load_text_encoder
from instructav2av.weights.video_vae import load_video_vae

UNSAFE_ADVICE = ("weights_only", "safe_globals", "trust", "can still be loaded")


class _Payload:
    def __reduce__(self):  # what an unsafe load would run
        return (print, ("this must never run",))


@pytest.fixture(scope="module", params=["numpy", "code"])
def unsafe(request, tmp_path_factory):
    extra = np.zeros(3) if request.param == "numpy" else _Payload()
    path = tmp_path_factory.mktemp("pickles") / f"{request.param}.pt"
    torch.save({"weight": torch.zeros(2), "extra": extra}, path)
    return path


def _check(message: str, path) -> None:
    assert str(path) in message and "never runs code" in message, message
    assert not any(word in message for word in UNSAFE_ADVICE), message


def test_every_loader_refuses_with_our_message(unsafe, capsys):
    for load in (load_torch_tensors, CheckpointFile, load_video_vae, load_text_encoder):
        with pytest.raises(CheckpointError) as caught:
            load(unsafe)
        _check(str(caught.value), unsafe)
    assert "this must never run" not in capsys.readouterr().out


def test_the_cli_never_suggests_an_unsafe_load(unsafe, capsys):
    assert main(["info", str(unsafe)]) == 1
    captured = capsys.readouterr()
    _check(captured.err, unsafe)
    assert "this must never run" not in captured.out
