"""Worker for the DDP test: prune an MLP and fine-tune it with distillation, then rank 0 writes the masks and
the loss curve. Run as ``python ddp_worker.py OUT`` (one process) or under ``torchrun`` (several)."""

import json
import sys

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimtorch as st
from slimtorch.prune.masks import masks
from slimtorch.train import distributed
from slimtorch.train.finetune import frozen_copy


def main(out: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 3))
    teacher = frozen_copy(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    st.prune(model, st.UnstructuredPruning(sparsity=0.7, importance="taylor"), data=loader, seed=3)
    st.finetune(model, loader, teacher=teacher, config=st.Finetune(epochs=3, lr=3e-3, optimizer="sgd"), seed=1)
    if distributed.is_main():
        save_file({f"mask.{k}": v.to(torch.uint8) for k, v in masks(model).items()}
                  | {f"weight.{k}": v.contiguous() for k, v in model.state_dict().items()}, out + ".safetensors")
        with open(out + ".json", "w") as f:
            json.dump({"losses": model._slim_history.losses, "world": distributed.world_size()}, f)


if __name__ == "__main__":
    main(sys.argv[1])
