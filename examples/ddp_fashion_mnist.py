"""Perforated Backpropagation under DistributedDataParallel.

CPU, 2 processes:  torchrun --nproc_per_node=2 examples/ddp_fashion_mnist.py
GPUs:              torchrun --nproc_per_node=N examples/ddp_fashion_mnist.py --backend nccl
Several machines:  torchrun --nnodes=2 --node_rank=R --rdzv_backend=c10d \\
                       --rdzv_endpoint=HOST:29500 --nproc_per_node=N examples/ddp_fashion_mnist.py

Needs Fashion-MNIST IDX files (apt-get install -y dataset-fashion-mnist, or --data DIR).
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import perforate
from perforate.experiments.datasets import FASHION_MNIST_DIR, idx_directory

parser = argparse.ArgumentParser()
parser.add_argument("--backend", default="gloo")
parser.add_argument("--data", default=FASHION_MNIST_DIR)
parser.add_argument("--hidden", type=int, default=8)
parser.add_argument("--max-epochs", type=int, default=60)
parser.add_argument("--out", default="runs/ddp_fashion_mnist")
args = parser.parse_args()

dist.init_process_group(args.backend)
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if args.backend == "nccl" else "cpu")
torch.set_num_threads(1 if device.type == "cpu" else torch.get_num_threads())
data = idx_directory(args.data)
x_train, y_train = data.x_train.to(device), data.y_train.to(device)
x_val, y_val = data.x_val.to(device), data.y_val.to(device)

torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
model = nn.Sequential(
    nn.Flatten(), nn.Linear(784, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10)
).to(device)
config = perforate.DendriteConfig(patience=4, max_dendrites=2, max_epochs=args.max_epochs)


def wrap(module):
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


ctl = perforate.Perforator(
    model,
    config,
    seed=0,
    wrapper=wrap,
    optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    candidate_optimizer=lambda p: torch.optim.Adam(p, lr=5e-3),
    checkpoint_path=f"{args.out}/ckpt.safetensors",
)
order = torch.Generator().manual_seed(0)  # same global order on every rank; each takes a shard
while not ctl.done:
    perm = torch.randperm(len(y_train), generator=order).to(device)
    shard = perm[rank::world]
    for idx in shard.split(128):
        ctl.optimizer.zero_grad()
        nn.functional.cross_entropy(ctl.wrapped(x_train[idx]), y_train[idx]).backward()
        ctl.optimizer.step()
    with torch.no_grad():
        val = (model(x_val).argmax(1) == y_val).float().mean().item()
    event = ctl.end_epoch(val)  # averaged over ranks: everyone decides the same
    if rank == 0:
        print(f"epoch {ctl.epoch:3d}  val {val:.4f}  {event.value}", flush=True)
if rank == 0:
    print(perforate.parameter_report(model))
    perforate.save(model, f"{args.out}/model.safetensors")
dist.destroy_process_group()
