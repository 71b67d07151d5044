"""The course sample code's training loop (ML2021 Spring HW1), re-implemented as the baseline.

Kept as the sample wrote it, because its costs are what the benchmark compares against: a
per-row Dataset, a DataLoader(batch_size=270, shuffle=True) with the default per-row collate, a
93-64-1 MLP with SGD(lr=1e-3, momentum=0.9) and MSELoss, the dev set (every 10th row) evaluated
through its own DataLoader after every epoch, and the train loss read with ``.item()`` per step.

Departures, each either required for a fair comparison or cheaper than the original (so the
measured speed-up is, if anything, understated):
- the dev rows are normalised with the training rows' mean/std (the sample fitted each set on
  itself), columns 40: as in the sample;
- early stopping is off: exactly ``--epochs`` epochs run;
- no ``torch.save`` of the model on each dev improvement, and no printing.

Run by ``bench/bench.py`` in its own process; prints one JSON line with the loop's own seconds
and torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

SEED = 42069  # the sample code's myseed
BATCH_SIZE = 270
N_FEATURES = 93
FIRST_CONTINUOUS = 40  # columns 40: (after the 40 state one-hots) are normalised


class COVID19Dataset(Dataset):
    """One row per ``__getitem__``, as the sample's dataset: features = 93 columns after the id."""

    def __init__(self, features: torch.Tensor, target: torch.Tensor) -> None:
        self.data = features
        self.target = target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index], self.target[index]

    def __len__(self) -> int:
        return len(self.data)


def load_datasets(train_csv: str) -> tuple[COVID19Dataset, COVID19Dataset]:
    """Train rows (i % 10 != 0) and dev rows (i % 10 == 0), normalised with train statistics."""
    table = pd.read_csv(train_csv).to_numpy(dtype=np.float64)[:, 1:]  # drop the id column
    features, target = table[:, :N_FEATURES], table[:, -1]
    rows = np.arange(len(table))
    train_rows, dev_rows = rows[rows % 10 != 0], rows[rows % 10 == 0]
    x_train = torch.FloatTensor(features[train_rows])
    x_dev = torch.FloatTensor(features[dev_rows])
    # per-set statistics leak and shift the dev inputs; fit on the training rows only
    continuous = x_train[:, FIRST_CONTINUOUS:]
    mean = continuous.mean(dim=0, keepdim=True)
    std = continuous.std(dim=0, keepdim=True)
    x_train[:, FIRST_CONTINUOUS:] = (continuous - mean) / std
    x_dev[:, FIRST_CONTINUOUS:] = (x_dev[:, FIRST_CONTINUOUS:] - mean) / std
    return (
        COVID19Dataset(x_train, torch.FloatTensor(target[train_rows])),
        COVID19Dataset(x_dev, torch.FloatTensor(target[dev_rows])),
    )


class NeuralNet(nn.Module):
    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, 64), nn.ReLU(), nn.Linear(64, 1))
        self.criterion = nn.MSELoss(reduction="mean")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def cal_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(pred, target)


def dev(dv_set: DataLoader, model: NeuralNet, device: str) -> float:
    model.eval()
    total_loss = 0.0
    for x, y in dv_set:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            pred = model(x)
            mse_loss = model.cal_loss(pred, y)
        total_loss += mse_loss.detach().cpu().item() * len(x)
    return total_loss / len(dv_set.dataset)


def train(
    tr_set: DataLoader, dv_set: DataLoader, model: NeuralNet, n_epochs: int, device: str
) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    min_mse = 1000.0
    loss_record: dict[str, list[float]] = {"train": [], "dev": []}
    for _ in range(n_epochs):
        model.train()
        for x, y in tr_set:
            optimizer.zero_grad()
            x, y = x.to(device), y.to(device)
            pred = model(x)
            mse_loss = model.cal_loss(pred, y)
            mse_loss.backward()
            optimizer.step()
            loss_record["train"].append(mse_loss.detach().cpu().item())
        dev_mse = dev(dv_set, model, device)
        min_mse = min(min_mse, dev_mse)
        loss_record["dev"].append(dev_mse)
    return min_mse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-csv", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    args = parser.parse_args()
    if args.threads > 0:  # the course code never set it; only for comparisons
        torch.set_num_threads(args.threads)

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pin = device == "cuda"  # the sample always asked; on CPU it only warns
    train_set, dev_set = load_datasets(args.train_csv)
    tr_loader = DataLoader(train_set, BATCH_SIZE, shuffle=True, drop_last=False, pin_memory=pin)
    dv_loader = DataLoader(dev_set, BATCH_SIZE, shuffle=False, drop_last=False, pin_memory=pin)
    model = NeuralNet(train_set.data.shape[1]).to(device)

    start = time.perf_counter()
    min_mse = train(tr_loader, dv_loader, model, args.epochs, device)
    seconds = time.perf_counter() - start
    report = {"epochs_run": args.epochs, "seconds": seconds, "min_dev_mse": min_mse}
    print(json.dumps({**report, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
