"""Process-group set-up and the collectives the trainer needs (DDP and FSDP via torch.distributed).

Every function is a no-op or the plain single-process answer when no process group exists, so the
trainer reads the same on one CPU and on eight GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun``/``accelerate launch`` describe in the environment.

    Returns ``(rank, world_size)``; a single process (no ``WORLD_SIZE`` > 1) needs no group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_fsdp(model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    # Blocks are driven through attend_self/attend_context_ffn, not forward: shard their layers
    # (called through __call__, so FSDP's hooks gather them) and leave the rest to the root unit.
    for tower in (model.video_model, model.audio_model):
        for block in tower.blocks:
            for sub in (block.self_attn, block.cross_attn, block.ffn):
                fully_shard(sub)
    fully_shard(model)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device])


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (a collective); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(t: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This process's shard of the whole tensor ``t``, laid out as the FSDP parameter ``param``."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.to(param.device), param.device_mesh, param.placements)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


@dataclass
class StateView:
    """What ``save_editor`` reads of a model, for a state dict gathered from FSDP shards."""

    config: object
    editor: bool
    state: dict

    def state_dict(self) -> dict:
        return self.state


def gathered_model(model: nn.Module) -> StateView:
    """The whole model state of an FSDP model (a collective), in a form ``save_editor`` accepts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return StateView(model.config, model.editor, full)


def all_gather(obj: object, world: int) -> list:
    """``obj`` of every process, in rank order (``[obj]`` for one process)."""
    if world == 1:
        return [obj]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def any_process(flag: bool, world: int, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on any (so that all stop at the same step)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_processes(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
