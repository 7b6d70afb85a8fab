"""Block swap: keep N of each tower's blocks off the compute device and bring each in just before it runs.

The DiT runs its towers block by block (fused block ``i`` = video block ``i`` + audio block ``i``).
:class:`BlockSwap` takes the frozen weights of blocks ``0 .. N-1`` of both towers off the compute
device; :meth:`BlockSwap.fetch` (called by the model before fused block ``i``) makes block ``i``
resident, starts copying the next block in the running direction (forward: ``i+1``; a
gradient-checkpointed backward recomputes in reverse: ``i-1``) and drops every other swapped block.
At most two swapped blocks are on the device at once, so the device holds the resident weights plus
two blocks instead of the whole model.

- Where the weights wait: pinned host memory (CUDA: the copy runs on a side stream and overlaps the
  block before it; the compute stream waits on an event), or the safetensors file itself
  (:func:`load_streaming`: the swapped blocks are never held in host RAM at all, each fetch reads its
  tensors from the file into fresh memory, so host RAM holds the resident part plus two blocks).
- Trainable parameters (LoRA, SIGA in training) are never swapped: they stay resident, so the
  optimizer's Parameter objects never change. Swapping replaces the frozen Parameter objects in their
  modules (a fetched block gets fresh ones, a released block gets ``meta`` placeholders), so a
  released block that something still uses fails loudly instead of computing with stale weights,
  and an autograd graph that saved a weight keeps its own tensor until backward is done with it.
- On the CPU (device ``"cpu"``) the same mechanics run, with copies instead of transfers: that is
  what the tests check (equal outputs, at most two swapped blocks materialised, the counts).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(r"^(video_model|audio_model)\.blocks\.(\d+)\.")


@dataclass
class SwapStats:
    fetches: int = 0  # blocks brought to the device (prefetches included)
    bytes_moved: int = 0
    max_resident: int = 0  # most swapped blocks materialised at once
    resident_now: set[int] = field(default_factory=set)


@dataclass
class _Slot:
    module: nn.Module
    name: str
    kind: str  # "param" | "buffer"
    key: str  # state-dict key (for reading from a file)
    host: torch.Tensor | None  # None: read from the source on each fetch
    placeholder: torch.Tensor  # meta tensor of the right shape and dtype


def check_blocks_to_swap(blocks_to_swap: int, num_layers: int) -> int:
    """``blocks_to_swap`` as an int in ``[0, num_layers]``; anything else is a clear error."""
    if isinstance(blocks_to_swap, bool) or not isinstance(blocks_to_swap, int):
        raise TypeError(f"blocks_to_swap must be an integer, got {blocks_to_swap!r}")
    if not 0 <= blocks_to_swap <= num_layers:
        raise ValueError(f"blocks_to_swap={blocks_to_swap} but the model has {num_layers} blocks per tower; "
                         f"choose 0 (none swapped) to {num_layers} (every block swapped)")
    return blocks_to_swap


class FileBlockSource:
    """Reads swapped blocks' tensors from a safetensors file on each fetch (nothing kept in host RAM).

    Each tensor is read into memory of its own (``weights.io.CheckpointFile``: no memory map, so the
    file's pages never count against the process) and converted to the dtype the model holds; a
    Linear stored in bf16 whose model layer is scaled fp8 is quantized on each read (deterministic, so
    every fetch gives the same bytes).
    """

    def __init__(self, path: str | os.PathLike, prefix: str = ""):
        from ..weights.io import CheckpointFile

        self.ckpt = CheckpointFile(path)
        if self.ckpt.container != "safetensors":
            raise ValueError(f"{path}: block streaming reads safetensors files; this is a PyTorch pickle "
                             "(convert it with `instructav2av convert`, or load it without streaming)")
        self.prefix = prefix

    def read(self, slots: list[_Slot]) -> list[torch.Tensor]:
        from ..models.ops import FP8_DTYPES, quantize_fp8
        from ..weights import fp8

        keys = {s.key for s in slots}
        out: dict[str, torch.Tensor] = {}
        for s in slots:
            if s.key in out:
                continue
            name = self.prefix + s.key
            want = s.placeholder.dtype
            if s.key.endswith(fp8.SCALE_SUFFIX):
                if name in self.ckpt.shapes:
                    out[s.key] = fp8.read_scale(self.ckpt, name, str(self.ckpt.path))
                continue  # else made with its weight below
            scale_key = s.key[: -len(".weight")] + fp8.SCALE_SUFFIX if s.key.endswith(".weight") else ""
            file_scale = self.prefix + scale_key if scale_key else ""
            if want in FP8_DTYPES and scale_key in keys:
                stored = self.ckpt.stored_dtype(name)
                if stored == want:
                    out[s.key] = self.ckpt.read(name, want)
                    if file_scale not in self.ckpt.shapes:
                        out[scale_key] = torch.ones((), dtype=torch.float32)
                else:
                    real = self.ckpt.read(name, torch.float32)
                    if file_scale in self.ckpt.shapes:
                        real = real * fp8.read_scale(self.ckpt, file_scale, str(self.ckpt.path))
                    out[s.key], out[scale_key] = quantize_fp8(real, want)
            elif file_scale in self.ckpt.shapes:  # scaled file, unscaled model: dequantize
                real = self.ckpt.read(name, torch.float32) * fp8.read_scale(self.ckpt, file_scale, str(self.ckpt.path))
                out[s.key] = real.to(want)
            else:
                out[s.key] = self.ckpt.read(name, want)
        return [out[s.key] for s in slots]

    def close(self) -> None:
        self.ckpt.close()


class BlockSwap:
    """Keep blocks ``0 .. blocks_to_swap-1`` of both towers off ``device`` (see the module docstring).

    ``attach()`` installs it: the swapped blocks' frozen tensors move to host storage (pinned on CUDA
    unless ``pin_memory=False``) or, with a ``source``, stay in the file; everything else moves to
    ``device``; the model calls :meth:`fetch` before each fused block and :meth:`finish` after the
    last. ``detach()`` undoes it (every block back in host memory, on the host).
    """

    def __init__(self, model: nn.Module, blocks_to_swap: int, device: str | torch.device, *,
                 source: FileBlockSource | None = None, pin_memory: bool | None = None, prefetch: bool = True):
        self.model = model
        self.num_layers = int(model.num_layers)
        self.n = check_blocks_to_swap(blocks_to_swap, self.num_layers)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.source = source
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin_memory is None else bool(pin_memory and self.cuda)
        self.prefetch = prefetch
        self.swapped = frozenset(range(self.n))
        self.stats = SwapStats()
        self._slots: dict[int, list[_Slot]] = {}
        self._events: dict[int, object] = {}  # fetched block -> CUDA event (None once waited for / on the CPU)
        self._last: int | None = None
        self._stream = None

    # -- installing -----------------------------------------------------------------------------
    def _blocks(self, i: int) -> Iterable[tuple[str, nn.Module]]:
        for tower in ("video_model", "audio_model"):
            yield f"{tower}.blocks.{i}", getattr(self.model, tower).blocks[i]

    def attach(self) -> BlockSwap:
        if getattr(self.model, "block_swap", None) is not None:
            raise RuntimeError("this model already has a block swap attached; detach() it first")
        for i in sorted(self.swapped):
            slots = []
            for prefix, block in self._blocks(i):
                for mname, module in block.named_modules():
                    base = f"{prefix}.{mname}." if mname else f"{prefix}."
                    for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
                        for name, t in list(table.items()):
                            if t is None or (kind == "param" and t.requires_grad):
                                continue  # trainable: stays resident
                            host = None
                            if not t.is_meta:
                                host = t.detach().to("cpu")
                                if self.pin:
                                    host = host.pin_memory()
                            elif self.source is None:
                                raise ValueError(f"{base}{name} is on the meta device and no file source was given")
                            slot = _Slot(module, name, kind, base + name, host,
                                         torch.empty(t.shape, dtype=t.dtype, device="meta"))
                            slots.append(slot)
                            self._set(slot, slot.placeholder)
            self._slots[i] = slots
        self._move_resident()
        self.model.block_swap = self
        logger.info("block swap: %d of %d blocks per tower off %s (%s), %.2f GB swapped", self.n, self.num_layers,
                    self.device, "streamed from the file" if self.source else ("pinned host memory" if self.pin
                                                                              else "host memory"),
                    self.swapped_bytes() / 1e9)
        return self

    def _move_resident(self) -> None:
        lazy_trainable = []
        for name, p in self.model.named_parameters():
            if p.is_meta:
                if p.requires_grad:
                    lazy_trainable.append((name, p))
                continue
            if p.device != self.device:
                p.data = p.data.to(self.device)
        for module in self.model.modules():
            for name, b in list(module._buffers.items()):
                if b is not None and not b.is_meta and b.device != self.device:
                    module._buffers[name] = b.to(self.device)
        if lazy_trainable:  # streamed file, but these train: read once and keep them resident
            if self.source is None:
                raise ValueError(f"{lazy_trainable[0][0]} is on the meta device and no file source was given")
            slots = [_Slot(self.model, n, "param", n, None, p) for n, p in lazy_trainable]
            for (name, p), t in zip(lazy_trainable, self.source.read(slots)):
                owner, _, leaf = name.rpartition(".")
                # a new Parameter (meta tensors cannot take data): attach before making the optimizer
                self.model.get_submodule(owner)._parameters[leaf] = nn.Parameter(
                    t.to(device=self.device, dtype=p.dtype), requires_grad=True)

    def swapped_bytes(self) -> int:
        return sum(s.placeholder.numel() * s.placeholder.element_size() for v in self._slots.values() for s in v)

    def detach(self) -> nn.Module:
        """Every swapped block back in host memory (read from the file if streamed); the model itself stays put."""
        for i in list(self._events):
            self._release(i)
        for slots in self._slots.values():
            tensors = [s.host for s in slots] if self.source is None else self.source.read(slots)
            for s, t in zip(slots, tensors):
                self._set(s, t)
        self._slots.clear()
        self.model.block_swap = None
        return self.model

    @contextmanager
    def gathered(self) -> Iterator[nn.Module]:
        """Every swapped block materialised in host memory for the duration (saving, hashing the weights)."""
        self.finish()
        for slots in self._slots.values():
            tensors = [s.host for s in slots] if self.source is None else self.source.read(slots)
            for s, t in zip(slots, tensors):
                self._set(s, t)
        try:
            yield self.model
        finally:
            for slots in self._slots.values():
                for s in slots:
                    self._set(s, s.placeholder)

    @staticmethod
    def _set(slot: _Slot, tensor: torch.Tensor) -> None:
        if slot.kind == "param":
            slot.module._parameters[slot.name] = nn.Parameter(tensor, requires_grad=False)
        else:
            slot.module._buffers[slot.name] = tensor

    # -- running --------------------------------------------------------------------------------
    def fetch(self, i: int) -> None:
        """Make fused block ``i`` resident, prefetch the next one, drop the other swapped blocks."""
        direction = 1 if self._last is None or i >= self._last else -1
        self._last = i
        nxt = i + direction
        keep = {j for j in (i, nxt) if j in self.swapped}
        for j in [j for j in self._events if j not in keep]:  # first, so that at most two are ever resident
            self._release(j)
        if i in self.swapped:
            self._materialise(i)
        if self.prefetch and nxt in self.swapped:
            self._materialise(nxt)
        if i in self.swapped:
            self._wait(i)

    def finish(self) -> None:
        """After the last block: drop every swapped block from the device."""
        for j in list(self._events):
            self._release(j)
        self._last = None

    def _materialise(self, i: int) -> None:
        if i in self._events:
            return
        slots = self._slots[i]
        event = None
        if self.cuda:
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._stream):
                tensors = [s.host for s in slots] if self.source is None else self.source.read(slots)
                tensors = [t.to(self.device, non_blocking=True) for t in tensors]
                event = torch.cuda.Event()
                event.record(self._stream)
        else:
            # the CPU stand-in for a transfer: a copy of its own (or a fresh read from the file)
            tensors = ([s.host.to(self.device, copy=True) for s in slots] if self.source is None
                       else [t.to(self.device) for t in self.source.read(slots)])
        for s, t in zip(slots, tensors):
            self._set(s, t)
        self._events[i] = event
        self.stats.fetches += 1
        self.stats.bytes_moved += sum(t.numel() * t.element_size() for t in tensors)
        self.stats.resident_now = set(self._events)
        self.stats.max_resident = max(self.stats.max_resident, len(self._events))

    def _wait(self, i: int) -> None:
        event = self._events.get(i)
        if event is None:
            return
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(event)
        for s in self._slots[i]:  # made on the side stream, used on this one: the allocator must know
            t = s.module._parameters[s.name] if s.kind == "param" else s.module._buffers[s.name]
            t.record_stream(stream)
        self._events[i] = None

    def _release(self, i: int) -> None:
        for s in self._slots[i]:
            self._set(s, s.placeholder)
        self._events.pop(i, None)
        self.stats.resident_now = set(self._events)


def enable_block_swap(model: nn.Module, blocks_to_swap: int, device: str | torch.device, **kwargs) -> BlockSwap | None:
    """Attach a :class:`BlockSwap` (``blocks_to_swap`` 0: just move the model to ``device``; returns None)."""
    check_blocks_to_swap(blocks_to_swap, int(model.num_layers))
    if blocks_to_swap == 0:
        model.to(device)
        return None
    return BlockSwap(model, blocks_to_swap, device, **kwargs).attach()


def block_key_filter(blocks_to_swap: int) -> Callable[[str], bool]:
    """Whether a state-dict key belongs to a swapped block (blocks ``0 .. blocks_to_swap-1`` of a tower)."""
    def swapped(key: str) -> bool:
        m = _BLOCK_KEY.match(key)
        return bool(m) and int(m.group(2)) < blocks_to_swap
    return swapped


def load_streaming(path: str | os.PathLike, blocks_to_swap: int, device: str | torch.device = "cpu",
                   **load_kwargs) -> tuple[nn.Module, object, BlockSwap | None]:
    """Load a DiT file with its first ``blocks_to_swap`` blocks per tower left in the file.

    The resident part is read as :func:`~instructav2av.weights.dit.load_model` reads it; the swapped
    blocks are read from the file on each fetch, so host RAM never holds them (the file must be
    safetensors and already in the layout being loaded: an Ovi file loaded as an editor is converted
    while loading, which needs every tensor; convert it once with ``instructav2av convert``).
    Returns ``(model, info, swap)``.
    """
    from ..weights.dit import inspect_checkpoint, load_model

    info = inspect_checkpoint(path, preset=load_kwargs.get("preset"))
    if info.problem is None and info.config is not None:
        check_blocks_to_swap(blocks_to_swap, info.config.video.num_layers)
    if blocks_to_swap == 0:
        model, info = load_model(path, device=device, **load_kwargs)
        return model, info, None
    if load_kwargs.get("editor") and not info.editor:
        raise ValueError(f"{path} holds Ovi's base weights: streaming its blocks as an editor needs the converted "
                         "file (`instructav2av convert` once), because conversion reads every tensor")
    model, info = load_model(path, device="cpu", lazy=block_key_filter(blocks_to_swap), **load_kwargs)
    model.requires_grad_(False)  # frozen weights stream; parameters made trainable later are not swapped
    source = FileBlockSource(path, info.layout.prefix)
    return model, info, BlockSwap(model, blocks_to_swap, device, source=source).attach()


__all__ = ["BlockSwap", "FileBlockSource", "SwapStats", "check_blocks_to_swap", "enable_block_swap",
           "block_key_filter", "load_streaming"]
