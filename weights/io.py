"""Checkpoint files as bytes: read a safetensors/.pt header and its tensors, write safetensors, atomically.

Nothing here knows the model. :class:`CheckpointFile` reads names, shapes, dtypes and metadata
from the header alone and then each tensor straight into memory of its own (no memory map, so a
file's pages never count against the process); :func:`write_safetensors` streams one tensor at a
time; :func:`atomic_write` publishes a file in one step and never replaces one it was not told to.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

import torch

from ..files import check_apart

# safetensors dtype spelling -> torch dtype, for the dtypes a DiT checkpoint may hold
_ST_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_ST_NAME = {v: k for k, v in _ST_DTYPES.items()}
SHORT_DTYPE_NAMES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float8_e4m3fn: "fp8_e4m3fn",
    torch.float8_e5m2: "fp8_e5m2",
}
# names for the safetensors dtypes that exist but never belong in this model's checkpoint
_ST_OTHER = {"F64": "float64", "I8": "int8", "U8": "uint8", "I16": "int16", "U16": "uint16", "I32": "int32",
             "U32": "uint32", "I64": "int64", "U64": "uint64", "BOOL": "bool", "F8_E8M0": "fp8_e8m0"}
_ST_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "F8_E5M2": 1, "F64": 8, "I8": 1, "U8": 1,
                "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "F8_E8M0": 1}
EXPECTED_DTYPES = "bf16, fp16, fp32 or fp8 (e4m3fn/e5m2)"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, damaged, or the wrong kind for the slot it was given to."""


def load_torch_tensors(path: str | os.PathLike, *, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    A file that pickles anything else is refused with our message. torch's own message for it
    suggests ``weights_only=False`` or allow-listing the object, i.e. running code from the file:
    that advice must never reach a user of this pack, whatever the file is.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" not in text and "Unsupported global" not in text:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {text.splitlines()[0][:200]}"
                                  if text else f"{path} is not a readable PyTorch checkpoint") from None
        found = re.search(r"GLOBAL ([\w.]+)", text)
        raise CheckpointError(
            f"{path} stores Python objects besides tensors ({found.group(1) if found else 'an object'}), and "
            "InstructAV2AV reads only tensors from .pt/.pth files: it never runs code stored in a model file. "
            "Use the publisher's original checkpoint or a .safetensors file of it"
        ) from None


# --------------------------------------------------------------------------------------------
# Reading: the header first, then each tensor straight into memory of its own
# --------------------------------------------------------------------------------------------


class CheckpointFile:
    """An open checkpoint: names, shapes, dtypes and metadata from the header; tensors on demand.

    ``read(name, dtype, device)`` returns a tensor of its own: safetensors data is read straight
    into it (no memory map, so the file's pages never count against the process); a zip pickle is
    memory-mapped by ``torch.load`` and each tensor copied out once.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            where = "it is a directory" if self.path.is_dir() else "no such file"
            raise FileNotFoundError(f"checkpoint {self.path} not found ({where}); expected a .safetensors or .pt/.pth file")
        self.file_size = self.path.stat().st_size
        if self.file_size == 0:
            raise CheckpointError(f"{self.path} is empty (0 bytes); expected a .safetensors or .pt/.pth checkpoint "
                                  "(an interrupted download or copy?)")
        self.metadata: dict[str, str] = {}
        self.nesting = ""
        self._fh: IO[bytes] | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        with open(self.path, "rb") as f:
            magic = f.read(8)
        if magic.startswith(b"PK\x03\x04") or (len(magic) > 1 and magic[0] == 0x80 and 2 <= magic[1] <= 5):
            self.container = "torch"
            self._open_torch(zipped=magic.startswith(b"PK"))
        elif magic.startswith(b"GGUF"):
            raise CheckpointError(f"{self.path} is a GGUF file; this loader reads safetensors or .pt/.pth checkpoints "
                                  "(bf16/fp16/fp32/fp8), not GGUF quantisations")
        else:
            self.container = "safetensors"
            self._open_safetensors()

    # -- safetensors --------------------------------------------------------------------------
    def _open_safetensors(self) -> None:
        path, size = self.path, self.file_size
        not_st = (f"{path} is not a safetensors file (expected an 8-byte little-endian header length followed by a "
                  "JSON header) nor a PyTorch .pt/.pth checkpoint")
        if size < 8:
            raise CheckpointError(f"{not_st}; it has only {size} bytes")
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            first = f.read(1)
            if first != b"{" or n < 2 or n > 100_000_000:
                raise CheckpointError(f"{not_st}; its first bytes are {_preview(path)}")
            if 8 + n > size:
                raise CheckpointError(f"{path} is truncated: its header alone should be {n:,} bytes but the file has "
                                      f"only {size:,} bytes (an interrupted download or copy? fetch it again)")
            raw = first + f.read(n - 1)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{not_st}; its header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{not_st}; its header is JSON but not an object")
        self.metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        data_end = 0
        for name, e in header.items():
            try:
                dtype, shape, (start, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{not_st}; header entry {name!r} lacks dtype/shape/data_offsets") from None
            item = _ST_ITEMSIZE.get(dtype)
            if item is not None and end - start != math.prod(shape) * item:
                raise CheckpointError(f"{path} is damaged: tensor {name!r} ({dtype} {list(shape)}) should take "
                                      f"{math.prod(shape) * item:,} bytes but its header gives {end - start:,}")
            self._entries[name] = (dtype, shape, int(start), int(end))
            data_end = max(data_end, int(end))
        have = size - 8 - n
        if data_end > have:
            raise CheckpointError(f"{path} is truncated: its header describes {data_end:,} bytes of tensor data but the "
                                  f"file holds only {have:,} (file size {size:,} B; an interrupted download or copy? "
                                  "fetch it again)")
        self._data_start = 8 + n
        self.shapes = {k: e[1] for k, e in self._entries.items()}
        self.dtypes = {k: SHORT_DTYPE_NAMES[_ST_DTYPES[e[0]]] if e[0] in _ST_DTYPES else _ST_OTHER.get(e[0], e[0])
                       for k, e in self._entries.items()}

    # -- torch pickles (weights_only) -------------------------------------------------------------
    def _open_torch(self, zipped: bool) -> None:
        path = self.path
        if zipped:
            try:  # a cut zip loses its central directory (at the end): say so before torch.load's errno
                zipfile.ZipFile(path).close()
            except (zipfile.BadZipFile, OSError) as exc:
                raise CheckpointError(f"{path} is a truncated or damaged PyTorch checkpoint (zip: {exc}); an "
                                      "interrupted download or copy? fetch it again") from None
        try:
            # mmap only works for the zip format; weights_only refuses arbitrary pickled code
            obj = load_torch_tensors(path, mmap=zipped)
        except CheckpointError:
            raise
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
            msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            hint = " (it looks truncated or damaged: fetch it again)" if re.search(
                r"central directory|EOF|truncat|corrupt|zip archive", msg, re.I) else ""
            raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint{hint}: "
                                  f"{msg}. Expected a plain dict of tensors, optionally nested as ['module'] or "
                                  "['app']['model']") from None
        sd, self.nesting = _unnest(obj)
        if sd is None:
            raise CheckpointError(f"{path} is a PyTorch pickle but holds no dict of tensors (found {type(obj).__name__}"
                                  f"{' with keys ' + ', '.join(map(str, list(obj)[:6])) if isinstance(obj, dict) else ''}"
                                  "); expected a state dict, optionally nested as ['module'] or ['app']['model']")
        self._tensors = sd
        self.shapes = {k: tuple(v.shape) for k, v in sd.items()}
        self.dtypes = {k: SHORT_DTYPE_NAMES.get(v.dtype, str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}

    # -- access -------------------------------------------------------------------------------------
    def stored_dtype(self, name: str) -> torch.dtype:
        if self.container == "torch":
            return self._tensors[name].dtype
        st = self._entries[name][0]
        if st not in _ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} is {self.dtypes[name]}; expected {EXPECTED_DTYPES}")
        return _ST_DTYPES[st]

    def read(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Tensor ``name`` as a new tensor in ``dtype`` (default: as stored) on ``device``."""
        stored = self.stored_dtype(name)
        if self.container == "torch":
            return self._tensors[name].to(device=device, dtype=dtype or stored, copy=True)
        _, shape, start, end = self._entries[name]
        out = torch.empty(shape, dtype=stored)
        if end > start:
            if self._fh is None:
                self._fh = open(self.path, "rb")  # closed in close()
            buf = memoryview(out.reshape(-1).view(torch.uint8).numpy())
            self._fh.seek(self._data_start + start)
            done = 0
            while done < len(buf):  # one read() may return less (2 GiB per call on Linux)
                n = self._fh.readinto(buf[done : done + (1 << 30)])
                if not n:
                    raise CheckpointError(f"{self.path} ended early while reading {name!r}; the file is truncated")
                done += n
        return out.to(device=device, dtype=dtype or stored)

    def close(self) -> None:
        self._tensors = {}
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> CheckpointFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _preview(path: Path) -> str:
    with open(path, "rb") as f:
        return repr(f.read(16))


def _unnest(obj: object) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Find the tensor dict in a loaded pickle: Ovi's ``['module']`` / ``['app']['model']`` and common wrappers."""
    for path in ((), ("module",), ("app", "model"), ("state_dict",), ("model",), ("generator",), ("ema",)):
        node = obj
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node and all(isinstance(v, torch.Tensor) for v in node.values()):
            return {str(k): v for k, v in node.items()}, "".join(f"[{k!r}]" for k in path)
    return None, ""


# --------------------------------------------------------------------------------------------
# Writing: streamed, published atomically
# --------------------------------------------------------------------------------------------


def write_safetensors(f: IO[bytes], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Stream ``tensors`` to ``f`` in the safetensors format, one tensor in memory at a time.

    (``safetensors.torch.save_file`` first turns every tensor into ``bytes``, i.e. a second copy of
    the whole model.) Tensors go largest element size first, so each is aligned to its element size.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in _ST_NAME:
            raise ValueError(f"cannot save tensor {name!r} of dtype {t.dtype}; expected {EXPECTED_DTYPES}")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAME[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name in order:
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        if t.numel():
            f.write(memoryview(t.view(torch.uint8).numpy()))


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], None],
    *,
    overwrite: bool = False,
    keep: Iterable[tuple[str, str | os.PathLike | None]] = (),
) -> Path:
    """Write ``path`` through a temp file in the same folder, then publish it in one step.

    Without ``overwrite`` an existing file is never replaced, even one created while we wrote
    (the temp file is hard-linked to ``path``, which fails if ``path`` exists). ``keep``: the
    caller's inputs as ``(label, path)``; ``path`` naming one of them (through any link or
    spelling) raises :class:`~instructav2av.files.SameFileError`, also with ``overwrite``. The
    temp file is removed on every exit Python sees (errors, Ctrl-C, the CLI's SIGTERM/SIGHUP).
    """
    path = Path(path)
    keep = list(keep)
    check_apart(path, keep)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (choose another name or pass overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        check_apart(path, keep)  # again: a link to an input may have appeared while we wrote
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} appeared while it was being written; left it untouched") from None
            except OSError:  # no hard links on this filesystem: best effort
                if path.exists():
                    raise FileExistsError(f"{path} appeared while it was being written; left it untouched") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

__all__ = ["CheckpointError", "CheckpointFile", "EXPECTED_DTYPES", "SHORT_DTYPE_NAMES", "write_safetensors", "atomic_write"]
