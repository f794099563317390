"""Several processes under torchrun: ``distributed`` joins the process group (gloo on CPU, nccl on CUDA)
and returns this process's place (``Dist``: rank and world size; rank 0 of 1 without torchrun),
``all_sum`` adds a number over all ranks, and ``wait_for_main`` lets every rank leave once rank 0 has
written the artifact. torch is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.store import Artifact, Store


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed(device: str) -> Dist:
    """Join the process group when torchrun started this process (WORLD_SIZE > 1): gloo on CPU,
    nccl on CUDA (one GPU per LOCAL_RANK). Without torchrun, rank 0 of 1 and nothing is joined."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def all_sum(value: float, dist: Dist) -> float:
    """``value`` summed over all ranks (itself with one process)."""
    if dist.world == 1:
        return value
    import torch
    import torch.distributed as td

    # gloo reduces CPU tensors, nccl only GPU ones
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if td.get_backend() == "nccl" else "cpu")
    td.all_reduce(t)
    return float(t.item())


def wait_for_main(name: str, store: Store) -> Artifact:
    """Under torchrun: every rank leaves once rank 0 has written the artifact (one barrier)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.barrier()
    return store.get(name)
