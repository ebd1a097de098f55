"""Data parallelism for the BDS trainer on torch.distributed (NCCL on GPUs, gloo on CPU).

The trainer runs one process per device. Every process holds a full replica of the LoRA
adapters and of the data scheduler and walks the same seeded data order (`EpochSampler`), so
every process knows the whole global batch of each step; each takes a contiguous slice of it
(`DataParallel.shard`). Gradients are summed across processes (`sum_gradients`) after losses
that are already normalised by the GLOBAL batch size, so the summed gradient is the gradient of
the single-process loss of the same batch, and every replica then takes the identical
optimizer step. `assert_replicas_agree` checks that claim bit for bit at every checkpoint.

A run is data-parallel when it was launched by torchrun (``WORLD_SIZE`` > 1 in the
environment: the group is created here, once per process) or when the caller already
initialised a process group. Otherwise `DataParallel()` is a single process and every
collective is the identity.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from bds_core.models.device import pick_device, resolve_device

# Gradients are all-reduced in flat buckets of at most this many elements (256 MiB of fp32).
_BUCKET_ELEMENTS = 1 << 26


@dataclass
class DataParallel:
    """This process's place in a data-parallel run, and the collectives the trainer uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and outputs and reports progress."""
        return self.rank == 0

    # ----------------------------------------------------------------------------- sharding
    def shard_bounds(self, batch_size: int) -> list[tuple[int, int]]:
        """(start, stop) of every rank's slice of a global batch: contiguous, sizes differ by
        at most one, larger slices first (the split of `torch.tensor_split`)."""
        base, extra = divmod(batch_size, self.world_size)
        bounds, start = [], 0
        for rank in range(self.world_size):
            stop = start + base + (1 if rank < extra else 0)
            bounds.append((start, stop))
            start = stop
        return bounds

    def shard(self, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This rank's slice of the global batch `batch` and the position where it starts."""
        start, stop = self.shard_bounds(len(batch))[self.rank]
        return batch[start:stop], start

    # ----------------------------------------------------------------------------- collectives
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of `tensor` over all ranks (a new tensor on `tensor`'s device)."""
        if not self.enabled:
            return tensor
        buffer = tensor.detach().to(self.comm_device, copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(tensor.device)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every parameter's gradient by its sum over ranks (missing gradients are 0).

        The losses are normalised by the global batch, so the sum is the gradient of the whole
        step. Every rank receives the same bits, so identical replicas stay identical.
        """
        if not self.enabled:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        for bucket in _buckets(list(params), _BUCKET_ELEMENTS):
            flat = torch.cat([p.grad.detach().reshape(-1) for p in bucket if p.grad is not None])
            flat = flat.to(self.comm_device)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for param in bucket:
                assert param.grad is not None
                count = param.grad.numel()
                param.grad.copy_(flat[offset : offset + count].view_as(param.grad))
                offset += count

    def gather_shards(self, local: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The global batch's values from every rank's slice (`local`, first dimension), in
        batch order, on every rank."""
        if not self.enabled:
            return local
        bounds = self.shard_bounds(batch_size)
        longest = max(stop - start for start, stop in bounds)
        padded = torch.zeros(
            (longest, *local.shape[1:]), dtype=local.dtype, device=self.comm_device
        )
        padded[: len(local)] = local.to(self.comm_device)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        pieces = [
            part[: stop - start] for part, (start, stop) in zip(gathered, bounds, strict=True)
        ]
        return torch.cat(pieces).to(local.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable objects only)."""
        if not self.enabled:
            return obj
        holder = [obj if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, device=self._object_device())
        return holder[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite every tensor with rank 0's value (in place)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in tensors:
                buffer = tensor.detach().to(self.comm_device, copy=True)
                dist.broadcast(buffer, src=0)
                tensor.copy_(buffer.to(tensor.device))

    def barrier(self) -> None:
        """Wait until every rank has arrived."""
        if self.enabled:
            if self.comm_device.type == "cuda":
                dist.barrier(device_ids=[self.comm_device.index or 0])
            else:
                dist.barrier()

    @contextmanager
    def main_first(self, active: bool = True) -> Iterator[None]:
        """Run the body on rank 0 first, then on the others (for work that fills a cache)."""
        if not (active and self.enabled):
            yield
            return
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def assert_replicas_agree(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Raise RuntimeError unless `tensors` hold the same bits on every rank."""
        if not self.enabled:
            return
        local = bit_checksum(tensors).to(self.comm_device)
        highest, lowest = local.clone(), local.clone()
        dist.all_reduce(highest, op=dist.ReduceOp.MAX)
        dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
        if not torch.equal(highest, lowest):
            raise RuntimeError(
                f"{what} differ between the {self.world_size} ranks (checksum on rank "
                f"{self.rank}: {local.tolist()}); the replicas diverged, which is a bug"
            )

    def _object_device(self) -> torch.device | None:
        return self.comm_device if self.comm_device.type == "cuda" else None


def _buckets(
    params: list[torch.nn.Parameter], max_elements: int
) -> Iterator[list[torch.nn.Parameter]]:
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for param in params:
        if bucket and size + param.numel() > max_elements:
            yield bucket
            bucket, size = [], 0
        bucket.append(param)
        size += param.numel()
    if bucket:
        yield bucket


def bit_checksum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Two int64 sums over the raw bits of `tensors` (plain and position-weighted): equal
    tensors give equal checksums on any machine, and a single flipped bit changes them."""
    plain = torch.zeros((), dtype=torch.int64)
    weighted = torch.zeros((), dtype=torch.int64)
    position = 0
    chunk = 1 << 22
    for tensor in tensors:
        flat = tensor.detach().contiguous().reshape(-1)
        if flat.element_size() == 4:
            words = flat.view(torch.int32)
        elif flat.element_size() == 2:
            words = flat.view(torch.int16)
        else:
            words = flat.view(torch.uint8)
        for begin in range(0, words.numel(), chunk):
            part = words[begin : begin + chunk].to("cpu", torch.int64)
            factors = torch.arange(position + begin, position + begin + part.numel()) % 1009 + 1
            plain += part.sum()
            weighted += (part * factors).sum()
        position += words.numel()
    return torch.stack([plain, weighted])


# --------------------------------------------------------------------------------- setup
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launched_world_size() -> int:
    """Processes of this run: the process group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(_env_int("WORLD_SIZE", 1), 1)


def _device_for_rank(requested: str | None, local_rank: int, world_size: int) -> torch.device:
    """The device of one rank: cuda:LOCAL_RANK when CUDA is used, else cpu."""
    device = resolve_device(requested) if requested else pick_device()
    if device.type != "cuda" or world_size == 1:
        return device
    if device.index is not None and requested is not None and ":" in requested:
        raise ValueError(
            f"device {requested!r} names one GPU, but this run has {world_size} processes; "
            "use device 'cuda' and each process takes cuda:LOCAL_RANK"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"process with LOCAL_RANK {local_rank} needs GPU {local_rank}, but only {count} "
            "GPU(s) are visible (CUDA_VISIBLE_DEVICES); start fewer processes per node"
        )
    return torch.device("cuda", local_rank)


def init_data_parallel(requested_device: str | None) -> tuple[DataParallel, torch.device]:
    """This process's `DataParallel` and training device.

    Uses an existing process group; else, under torchrun (WORLD_SIZE > 1), creates one (NCCL
    when the device is CUDA, gloo on CPU) that lives until the process exits; else returns a
    single-process `DataParallel`.
    """
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        local_rank = _env_int("LOCAL_RANK", rank)
        device = _device_for_rank(requested_device, local_rank, world_size)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = dist.get_backend()
        comm_device = device if backend == "nccl" else torch.device("cpu")
        if backend == "nccl" and device.type != "cuda":
            comm_device = torch.device("cuda", torch.cuda.current_device())
        return DataParallel(rank, world_size, local_rank, comm_device), device

    world_size = launched_world_size()
    if world_size == 1:
        device = resolve_device(requested_device) if requested_device else pick_device()
        return DataParallel(), device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = _device_for_rank(requested_device, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(_destroy_process_group)
    comm_device = device if device.type == "cuda" else torch.device("cpu")
    return DataParallel(rank, world_size, local_rank, comm_device), device


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DataParallel",
    "bit_checksum",
    "init_data_parallel",
    "launched_world_size",
]
