"""Several processes: `torchrun --nproc-per-node N sft.py ...` (and dpo.py, explore.py).

A stage starts with `ranks = Ranks.start(args.device, args.fsdp)`; alone it is `Ranks()` (rank 0 of 1)
and every method below does nothing special. Under torchrun each rank takes a contiguous share of every
optimizer step, the way one process splits a step into --micro-batch-size passes, so N ranks train the
weights one process trains (tests/test_distributed.py holds them to it).
"""
import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    fsdp: bool = False  # shard weights, gradients and optimizer state (fully_shard) instead of a copy each (DDP)
    counting: bool = True  # whether the pass `passes` last yielded counts (see `backward`)

    @classmethod
    def start(cls, device, fsdp=False):
        """Under torchrun: join the process group (gloo on CPU, nccl on GPU, one GPU a rank). Alone: rank 0 of 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, device, fsdp)
        import torch.distributed as dist
        if str(device).startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), world, device, fsdp)

    @property
    def main(self):
        """Rank 0 writes the outputs and prints: the ranks hold the same weights."""
        return self.rank == 0

    def wrap(self, model):
        """The module a step trains through. Alone: the model. Several ranks: DistributedDataParallel (a full
        copy on every rank, gradients averaged in backward), or with `fsdp` every decoder layer, then the
        rest, sharded over the ranks. Build the optimizer after this: fully_shard replaces the weights."""
        if self.world == 1:
            return model
        if not self.fsdp:
            return torch.nn.parallel.DistributedDataParallel(model)
        from torch.distributed.fsdp import fully_shard
        layer_classes = set(getattr(model, "_no_split_modules", None) or ())  # HF names its decoder layer here
        for module in model.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module)
        fully_shard(model)
        return model

    def passes(self, model, items, split):
        """Yield the forward passes of one optimizer step over `items`: this rank's share of them, split by
        `split(share)` (common.micro_batches). Call `backward(loss)` once a pass. Under torchrun a rank
        with no share, or (fully_shard) fewer passes than the busiest rank, still runs a pass on one item
        so that every rank joins each all-reduce; such a pass counts nothing (`counting` is False). The
        ranks average their gradients once per step, in the last pass's backward."""
        share = shard(items, self.rank, self.world)
        passes = split(share or items[:1])
        counted = [bool(share)] * len(passes)
        if self.world > 1 and self.fsdp:  # every forward gathers weights from all ranks: keep up with the busiest
            import torch.distributed as dist
            most = torch.tensor([len(passes)], device=self.device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            extra = int(most.item()) - len(passes)
            passes, counted = passes + [items[:1]] * extra, counted + [False] * extra
        for i, micro in enumerate(passes):
            self.counting = counted[i]
            with self._gradient_sync(model, sync=i == len(passes) - 1):
                yield micro

    def backward(self, loss):
        """loss.backward() for a pass of `passes`. Under torchrun DDP averages the gradients over the ranks
        while each rank's loss is already its share of the step's sum, so the loss is scaled by the number
        of ranks to undo that mean, and by 0 on a pass that counts nothing."""
        if self.world == 1:
            loss.backward()
        else:
            (loss * (self.world if self.counting else 0)).backward()

    @contextlib.contextmanager
    def _gradient_sync(self, model, sync):
        if self.world == 1 or sync:
            yield
        elif hasattr(model, "no_sync"):  # DistributedDataParallel
            with model.no_sync():
                yield
        else:  # fully_shard
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

    def sum(self, value):
        """A number summed over the ranks (alone: the number)."""
        if self.world == 1:
            return value
        import torch.distributed as dist
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.item()

    def gather(self, items):
        """Every rank's list, concatenated in rank order, on every rank."""
        if self.world == 1:
            return items
        import torch.distributed as dist
        shares = [None] * self.world
        dist.all_gather_object(shares, items)
        return [item for share in shares for item in share]

    def state_dict(self, model):
        """The weights to save: None (the model's own) unless sharded, then the whole model gathered to CPU
        from every rank's shards (every rank must call this)."""
        if self.world == 1 or not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard(items, rank, world):
    """Rank `rank`'s contiguous share of one step's items (the share `Ranks.passes` takes)."""
    per_rank = -(-len(items) // world)
    return items[rank * per_rank:(rank + 1) * per_rank]


def finish():
    """Under torchrun: wait for every rank, then leave the process group. A rank that exits while another
    still holds the group can make that one's gloo teardown abort."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
