"""Feature arrays into a model: a tensor Dataset, seeded whole-batch sampling, the DataLoader.

Batches are tensor slices of rows, not lists of per-row items, and every shuffle draws from its
own seeded generator, so the order of the training batches depends on the seed alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class HW01Dataset(torch.utils.data.Dataset):
    """Features and targets held as tensors; indexing with a tensor of rows returns a batch.

    Used with ``ShuffledBatches`` as the DataLoader's sampler (``batch_size=None``), each batch is
    one tensor slice: no per-row ``__getitem__`` and no per-row collate.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = None if y is None else torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, torch.Tensor) and index.dim() == 1:
            # the same rows as x[index], several times faster than advanced indexing
            x = self.x.index_select(0, index)
            return x, torch.empty(0) if self.y is None else self.y.index_select(0, index)
        if self.y is None:
            return self.x[index], torch.empty(0)
        return self.x[index], self.y[index]


def gather_rows(x: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``x[index]`` (rows), written into ``out`` when it has the right shape, else a new tensor.

    A training loop passes back what it got last epoch: a fresh tensor this size every epoch
    would be new pages from the system each time, and touching them first costs about as much
    as the copy. ``index_select`` is also several times faster than advanced indexing.
    """
    shape = (len(index), *x.shape[1:])
    if out is None or out.shape != shape:
        out = x.new_empty(shape)
    return torch.index_select(x, 0, index, out=out)


class ShuffledBatches(torch.utils.data.Sampler):
    """Yields one index tensor per mini-batch; a fresh permutation each epoch if ``shuffle``.

    The permutation comes from its own seeded ``torch.Generator``, never from the global RNG,
    so evaluation or dropout cannot change the order of the training batches.
    """

    def __init__(
        self, n_rows: int, batch_size: int, shuffle: bool, generator: torch.Generator | None
    ) -> None:
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order, _ = self.epoch_order()
        yield from order.split(self.batch_size)

    def epoch_order(self) -> tuple[torch.Tensor, list[int]]:
        """The next epoch's rows in batch order, and the batch sizes; what iterating gives."""
        if self.shuffle:
            order = torch.randperm(self.n_rows, generator=self.generator)
        else:
            order = torch.arange(self.n_rows)
        full, rest = divmod(self.n_rows, self.batch_size)
        return order, [self.batch_size] * full + ([rest] if rest else [])


def _seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python's random in each worker from torch's per-worker seed."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: HW01Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader over whole-batch slices, shuffled by a generator seeded with ``seed``.

    Two generators: one orders the batches, the other gives the DataLoader its per-epoch base
    seed (worker seeds), so neither touches the global torch RNG.
    """
    order_gen = torch.Generator().manual_seed(seed)
    loader_gen = torch.Generator().manual_seed(seed + 1)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=ShuffledBatches(len(dataset), batch_size, shuffle, order_gen),
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=loader_gen,
        persistent_workers=num_workers > 0,
    )
