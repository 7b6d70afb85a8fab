"""Training checkpoints: ``OUTPUT/checkpoints/step-NNNNNNN/`` folders written atomically.

A checkpoint holds the trainable parameters (``trainable.safetensors``), optimizer and scheduler
state with every process's RNG state (``state.pt``, read with ``weights_only=True``) and the run's
identity (``state.json``: step, config hash, data and base fingerprints). It is written to a
temporary folder and renamed into place, so a crash or a full disk never damages the previous one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..weights.io import CheckpointFile, atomic_write, write_safetensors
from .distributed import shard_like

CHECKPOINT_PREFIX = "step-"


# --------------------------------------------------------------------------------------------
# RNG state (saved per process; restored with weights_only loading)
# --------------------------------------------------------------------------------------------


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def run_rng(seed: int, rank: int, resume_state: dict | None = None):
    """Every global generator a run uses (torch CPU and CUDA, NumPy, Python's ``random``) for the
    length of the block: seeded from ``(seed, rank)`` for a new run, or set to ``resume_state``; the
    caller's own generator states come back afterwards (ComfyUI's, another run's). Per-sample
    randomness has its own generators (:mod:`.batches`); this covers the rest, e.g. LoRA dropout."""
    outer = rng_state()
    try:
        if resume_state is not None:
            set_rng_state(resume_state)
        else:
            value = int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)
            torch.manual_seed(value)  # CPU and every CUDA device
            np.random.seed(value % 2**32)
            random.seed(value)
        yield
    finally:
        set_rng_state(outer)


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------


def run_files(output_dir: str | os.PathLike) -> list[Path]:
    """What a run leaves in its output folder (log, checkpoints, products); empty for a fresh folder."""
    out = Path(output_dir)
    found = [p for p in (out / "loss.csv", out / "loss.png", out / "checkpoints" / "latest") if p.exists()]
    found += sorted((out / "validation").glob("*.mp4")) if (out / "validation").is_dir() else []
    found += sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")) if (out / "checkpoints").is_dir() else []
    found += sorted(p for pattern in ("adapter_*.safetensors", "editor_*.safetensors") for p in out.glob(pattern))
    return found


def check_new_run(output_dir: str | os.PathLike) -> None:
    """Refuse to start a new run in a folder that holds another run's files: both would write one
    ``loss.csv``, and pruning would keep the other run's higher steps and delete the new run's."""
    found = run_files(output_dir)
    if found:
        names = ", ".join(p.relative_to(Path(output_dir)).as_posix() for p in found[:4])
        raise FileExistsError(f"{output_dir} already holds a training run ({names}{', ...' if len(found) > 4 else ''}); "
                              "a new run needs an empty or new output folder (run name). To continue that run, "
                              "resume it (resume = \"latest\", same settings)")


# --------------------------------------------------------------------------------------------
# the checkpoint folder
# --------------------------------------------------------------------------------------------

# identity fields that must match on resume, and how the error names them
_SAME_ON_RESUME = (("data", "training data"), ("base", "base model weights"), ("world_size", "number of processes"),
                   ("preset", "model preset"))


class Checkpoints:
    """The ``checkpoints`` folder of one run: write, prune, find the newest, check and read one."""

    def __init__(self, folder: str | os.PathLike, keep: int):
        self.folder = Path(folder)
        self.keep = keep

    def _done(self) -> list[Path]:
        return sorted(p for p in self.folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").is_file())

    def write(self, step: int, trainable: dict[str, torch.Tensor], blob: dict, state: dict) -> Path:
        """Write ``step-NNNNNNN`` atomically (the caller is rank 0), point ``latest`` at it, prune."""
        final = self.folder / f"{CHECKPOINT_PREFIX}{step:07d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{final.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            with open(tmp / "trainable.safetensors", "wb") as f:
                write_safetensors(f, trainable, {"format": "instructav2av-train-state"})
                f.flush()
                os.fsync(f.fileno())
            torch.save(blob, tmp / "state.pt")
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            old = None
            if final.exists():  # the same step saved again (e.g. stopped right after a save)
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
            tmp.rename(final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as exc:  # also Ctrl-C and the CLI's SIGTERM/SIGHUP: no half-written folder stays
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(exc, OSError):
                raise
            prev = self.latest()
            raise RuntimeError(f"could not write the checkpoint of step {step} ({exc}; disk full?). "
                               f"The previous checkpoint {'is intact: ' + str(prev) if prev else 'does not exist'}"
                               ) from exc
        atomic_write(self.folder / "latest", lambda f: f.write(final.name.encode()), overwrite=True)
        self.prune(state.get("run_hash"))
        return final

    def prune(self, run_hash: str | None = None) -> None:
        """Keep the newest ``keep`` checkpoints; with ``run_hash``, only that run's are candidates
        (a checkpoint folder of another configuration is never deleted)."""
        def ours(p: Path) -> bool:
            if run_hash is None:
                return True
            try:
                return json.loads((p / "state.json").read_text()).get("run_hash") == run_hash
            except (OSError, ValueError):
                return False

        for p in [p for p in self._done() if ours(p)][: -self.keep]:
            shutil.rmtree(p, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.folder / "latest"
        if pointer.is_file():
            p = self.folder / pointer.read_text().strip()
            if (p / "state.json").is_file():
                return p
            # never fall back to another folder's newest step: it may be another run's
            raise FileNotFoundError(f"{pointer} names {p.name}, which is not a complete checkpoint; resume from an "
                                    f"explicit step-NNNNNNN folder of {self.folder} instead of 'latest'")
        done = self._done()
        return done[-1] if done else None

    def locate(self, where: str | os.PathLike) -> Path:
        """The checkpoint folder to resume from (``"latest"``: this run's newest)."""
        path = self.latest() if str(where) == "latest" else Path(where)
        if path is None or not (path / "state.json").is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {where if path is None else path} (looked in "
                                    f"{self.folder}); expected a step-NNNNNNN folder with state.json")
        return path


def check_identity(path: Path, state: dict, mine: dict) -> None:
    """Refuse to resume a checkpoint of another run (config, data, base weights, processes, preset)."""
    if state["run_hash"] != mine["run_hash"]:
        diffs = [f"{k}: checkpoint {state['run_config'].get(k)!r}, now {v!r}" for k, v in mine["run_config"].items()
                 if state["run_config"].get(k) != v]
        raise ValueError(f"{path} was written by another training configuration (config hash {state['run_hash']} "
                         f"vs {mine['run_hash']}): {'; '.join(diffs) or 'fields differ'}. Resume with the same "
                         "settings, or start a new run in another output folder")
    for key, what in _SAME_ON_RESUME:
        if state[key] != mine[key]:
            raise ValueError(f"{path} was written with other {what} ({state[key]} vs {mine[key]}); "
                             "resume with the same ones, or start a new run in another output folder")


def read_trainable(path: Path, params: Iterable[tuple[str, torch.Tensor]], *, sharded: bool) -> None:
    """Copy ``trainable.safetensors`` into ``params`` (each process keeps its shard when ``sharded``)."""
    params = list(params)
    with CheckpointFile(path / "trainable.safetensors") as f:
        names = {n for n, _ in params}
        if set(f.shapes) != names:
            raise ValueError(f"{path}: its trainable parameters differ from this model's "
                             f"({len(set(f.shapes) ^ names)} names differ)")
        with torch.no_grad():
            for name, p in params:
                t = f.read(name, p.dtype)
                if sharded:  # this process keeps its shard of the whole tensor
                    t = shard_like(t, p)
                p.copy_(t)
