"""Running ``slimtorch.finetune`` under ``torchrun`` as DistributedDataParallel, on PyTorch's own engine.

The same script runs on one process or many: ``torchrun --nproc-per-node=2 train.py`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``, and :func:`setup` then joins the process group (gloo on CPU, NCCL when the model
sits on a GPU), wraps the model in DDP and shards the data. The global batch stays the loader's batch size:
each of W ranks takes ``batch_size // W`` samples per step through a ``DistributedSampler``, so the averaged
gradient is that of the single-process batch. Only rank 0 logs, draws progress or should write files
(:func:`is_main`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler


def world_size() -> int:
    """Number of processes of this run (1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0)."""
    return rank() == 0


def init(model: nn.Module) -> None:
    """Join the torchrun process group once (gloo for a CPU model, NCCL for a CUDA one)."""
    if dist.is_initialized():
        return
    on_gpu = any(p.is_cuda for p in model.parameters())
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    # a group still alive at interpreter exit can abort the process ("terminate called without an active exception")
    atexit.register(_leave)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel (parameters broadcast from rank 0, gradients averaged)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    # the masks' gradient hooks zero pruned entries before DDP's allreduce; buffers (BN stats) follow rank 0
    return DistributedDataParallel(model, device_ids=ids)


class ShardedBatches:
    """An iterable giving this rank its slice (``batch[rank::world]``) of every batch of a plain iterable."""

    def __init__(self, batches: Iterable, rank_: int, world: int):
        self.batches, self.rank, self.world = batches, rank_, world

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            yield _slice(batch, self.rank, self.world)


def _slice(batch: Any, r: int, w: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[r::w]
    if isinstance(batch, dict):
        return {k: _slice(v, r, w) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_slice(v, r, w) for v in batch)
    return batch


def shard(loader: Iterable, seed: int) -> Iterable:
    """This rank's share of the training data.

    A ``DataLoader`` is rebuilt with a ``DistributedSampler`` (shuffled when the original shuffled, seeded)
    and ``batch_size // world`` per rank; any other iterable is sliced batch by batch.
    """
    w, r = world_size(), rank()
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return ShardedBatches(loader, r, w)
    shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    sampler = DistributedSampler(loader.dataset, num_replicas=w, rank=r, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=max(1, loader.batch_size // w), sampler=sampler,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, drop_last=loader.drop_last)


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Reshuffle a distributed sampler for a new epoch (a no-op for other loaders)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def mean_over_ranks(value: float) -> float:
    """The average of ``value`` over all ranks (itself outside a distributed run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
