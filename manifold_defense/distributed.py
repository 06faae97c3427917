"""Multi-process training under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node=N --no-python manifold-defense adv-train ...`` starts N processes with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set; ``init_from_environment`` joins them into one process
group. Outside torchrun it does nothing and training runs in one process.
"""

from __future__ import annotations

import os

import torch

__all__ = ["init_from_environment", "shutdown"]


def init_from_environment(device: str | None = None) -> tuple[int, int, torch.device | None]:
    """Initialise the default process group from torchrun's environment variables.

    Returns ``(world_size, rank, device)``; ``device`` is this rank's GPU (``cuda:LOCAL_RANK``) when
    CUDA is used, ``None`` otherwise (or outside torchrun). The backend is nccl with CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, None
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith(("cuda", "auto")))
    local = None
    if use_cuda:
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_world_size(), dist.get_rank(), local


def shutdown() -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
