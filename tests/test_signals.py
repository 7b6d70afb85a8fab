"""SIGTERM / SIGHUP during the final write leave no hidden temporary file (issue 11, item 4).

Real subprocesses: the CLI edits the bundled demo clip (or an atomic writer runs), a patched
encoder step announces that the hidden ``.partial`` file exists and then dawdles, and the test
sends the signal at that moment. Without the CLI's handlers the default action ends the process
on the spot and the temporary file stays.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import instructav2av
from instructav2av.cli import Terminated, install_signal_handlers, restore_signal_handlers

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")

DEMO_CLIP = Path(instructav2av.__file__).parent / "assets" / "demo" / "clip.mp4"

EDIT_SCRIPT = textwrap.dedent("""
    import sys, time, pathlib
    from instructav2av.media import video_write
    from instructav2av.cli import main
    ready = pathlib.Path(sys.argv[1])
    encode = video_write._encode_audio
    def slow(*args, **kwargs):  # called once per video frame while the hidden file is being written
        ready.touch()
        time.sleep(0.3)
        return encode(*args, **kwargs)
    video_write._encode_audio = slow
    sys.exit(main(sys.argv[2:]))
""")

ATOMIC_SCRIPT = textwrap.dedent("""
    import sys, time, pathlib
    from instructav2av.cli import install_signal_handlers
    from instructav2av.weights.io import atomic_write
    ready = pathlib.Path(sys.argv[1])
    def write(f):
        f.write(b"half of a checkpoint")
        f.flush()
        ready.touch()
        time.sleep(60)
    install_signal_handlers()
    atomic_write(sys.argv[2], write)
""")


def _env() -> dict[str, str]:
    root = str(Path(instructav2av.__file__).parent.parent)  # not resolved: the package may be a symlink
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _signal_when_ready(args: list[str], ready: Path, sig: int, folder: Path) -> tuple[int, str, list[str]]:
    """Start ``args``, wait for ``ready``, check a hidden temp file exists, send ``sig``; (rc, stderr, files)."""
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # The encoder buffers a few frames before the file is created: wait for the hidden file itself.
        while not (ready.exists() and any(p.name.startswith(".") for p in folder.iterdir())):
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate(timeout=5) if proc.poll() is not None else ("", "timed out")
                pytest.fail(f"no hidden file was ever written (rc {proc.returncode}): {err[-2000:]}")
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_edit_cleans_up_when_signalled_mid_write(tmp_path, sig):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ready = tmp_path / "ready"
    args = [sys.executable, "-c", EDIT_SCRIPT, str(ready), "edit", str(DEMO_CLIP), "delete the red circle",
            "-o", str(out_dir / "edited.mp4"), "--preset", "demo", "--device", "cpu"]
    rc, err, files = _signal_when_ready(args, ready, sig, out_dir)
    assert files == [], files  # neither the hidden .partial file nor a half-written output
    assert rc == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err


def test_atomic_writer_cleans_up_when_signalled(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ready = tmp_path / "ready"
    args = [sys.executable, "-c", ATOMIC_SCRIPT, str(ready), str(out_dir / "editor.safetensors")]
    rc, err, files = _signal_when_ready(args, ready, signal.SIGTERM, out_dir)
    assert files == [], files
    assert rc == 128 + signal.SIGTERM, err


def test_handlers_respect_nohup_and_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        previous = install_signal_handlers()
        assert signal.SIGHUP not in previous and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.SIGTERM in previous
        with pytest.raises(Terminated) as caught:
            signal.raise_signal(signal.SIGTERM)
        assert caught.value.code == 128 + signal.SIGTERM
        restore_signal_handlers(previous)
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_checkpoint_folder_is_removed_when_interrupted(tmp_path, monkeypatch):
    """The trainer's atomic checkpoint folder: an interrupt (Ctrl-C, or the CLI's SIGTERM turned into
    Terminated) while state.pt is written leaves no hidden ``.step-….partial-PID`` folder."""
    import torch

    from instructav2av.training import checkpointing

    def interrupted(*args, **kwargs):
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(checkpointing.torch, "save", interrupted)
    store = checkpointing.Checkpoints(tmp_path / "checkpoints", keep=2)
    with pytest.raises(Terminated):
        store.write(7, {"w": torch.zeros(2)}, {"optimizer": {}}, {"step": 7})
    assert list((tmp_path / "checkpoints").iterdir()) == []
