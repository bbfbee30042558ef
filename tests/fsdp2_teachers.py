"""Run by ``tests/test_training.py`` under ``torchrun --nproc_per_node 2`` (CPU, gloo): frozen teachers sharded with
TRL's ``prepare_fsdp`` (FSDP2) through :func:`thinkctl.training.prepare_frozen` hold only their shard, their
lm_head weights come back whole from :func:`thinkctl.training.head_weights`, and the TrRa loss equals the loss
with unsharded teachers.

accelerate enables FSDP only on GPUs, so the accelerator here is a stand-in carrying a real FSDP2 plugin: what
runs is TRL's and torch's sharding code, not a copy of it.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from tests.conftest import make_random_lm
from thinkctl.losses import chunked_fused_kd_loss
from thinkctl.training import head_weights, prepare_frozen


def main() -> None:
    dist.init_process_group("gloo")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=plugin), torch_device_mesh=None,
                                  device=torch.device("cpu"), parallelism_config=None, unwrap_model=lambda m: m)
    student = make_random_lm(seed=0)
    teachers = [prepare_frozen(make_random_lm(seed=s), accelerator) for s in (1, 2)]
    whole = [make_random_lm(seed=s) for s in (1, 2)]
    ids = torch.randint(4, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 8, dtype=torch.bool)

    def hidden(model: torch.nn.Module) -> torch.Tensor:
        return model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1][:, :-1]

    with torch.no_grad():
        with head_weights(accelerator, student, teachers) as heads:
            sharded = chunked_fused_kd_loss(hidden(student), *map(hidden, teachers), *heads, mask, 0.7).item()
            gathered = [tuple(h.shape) for h in heads]
        reference = chunked_fused_kd_loss(hidden(student), *map(hidden, whole), student.lm_head.weight,
                                          *(m.lm_head.weight for m in whole), mask, 0.7).item()
    head = teachers[0].lm_head.weight
    result = {
        "rank": dist.get_rank(), "sharded_head": isinstance(head, DTensor), "local_rows": head.to_local().shape[0],
        "rows": head.shape[0], "gathered": gathered, "loss_sharded": sharded, "loss_whole": reference,
        "trainable": any(p.requires_grad for t in teachers for p in t.parameters()),
    }
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, result)  # one line from rank 0: concurrent prints from two ranks interleave
    if dist.get_rank() == 0:
        print(json.dumps(results), flush=True)
    dist.barrier()  # no rank tears gloo down while another is still in a collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: a gloo/FSDP2 worker thread still joinable at exit aborts the process now and then
    # ("terminate called without an active exception") after the work is done and reported.
    os._exit(0)
