"""DDP under torchrun with 2 CPU processes (gloo) gives the same masks and loss curve as one process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimtorch.train.distributed import ShardedBatches, shard

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    env_cmd = [sys.executable]
    subprocess.run([*env_cmd, str(WORKER), single], check=True, timeout=120)
    subprocess.run([*env_cmd, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
                    multi], check=True, timeout=180)
    a, b = load_file(single + ".safetensors"), load_file(multi + ".safetensors")
    ra, rb = json.loads(Path(single + ".json").read_text()), json.loads(Path(multi + ".json").read_text())
    assert ra["world"] == 1 and rb["world"] == 2
    masks = [k for k in a if k.startswith("mask.")]
    assert masks and all(torch.equal(a[k], b[k]) for k in masks)
    # the global batch is the same, so the curves agree up to float summation order
    assert ra["losses"] == pytest.approx(rb["losses"], rel=1e-3)
    for k in a:
        if k.startswith("weight."):
            assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_plain_iterables_are_sliced_per_rank(monkeypatch):
    batches = [(torch.arange(6), torch.arange(6) * 10)]
    sliced = list(ShardedBatches(batches, 1, 2))
    assert sliced[0][0].tolist() == [1, 3, 5] and sliced[0][1].tolist() == [10, 30, 50]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(8.0)), batch_size=4)
    local = shard(loader, seed=0)
    assert local.batch_size == 2 and [b[0].tolist() for b in local] == [[1.0, 3.0], [5.0, 7.0]]
