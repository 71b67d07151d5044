"""The tensor Dataset, the whole-batch sampler and the seeded DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidreg.loaders import HW01Dataset, ShuffledBatches, make_loader


def test_dataset_indexing_with_a_tensor_returns_a_batch() -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10, dtype=np.float64) * 10
    dataset = HW01Dataset(x, y)
    assert len(dataset) == 10
    xb, yb = dataset[torch.tensor([7, 2, 2])]
    assert xb.dtype == torch.float32 and yb.dtype == torch.float32
    torch.testing.assert_close(xb, torch.tensor([[14.0, 15.0], [4.0, 5.0], [4.0, 5.0]]))
    torch.testing.assert_close(yb, torch.tensor([70.0, 20.0, 20.0]))
    x_only, empty = HW01Dataset(x)[torch.tensor([1])]
    torch.testing.assert_close(x_only, torch.tensor([[2.0, 3.0]]))
    assert empty.numel() == 0


def epochs_of(sampler: ShuffledBatches, n_epochs: int) -> list[list[torch.Tensor]]:
    return [list(sampler) for _ in range(n_epochs)]


def test_shuffled_batches_cover_every_row_once_per_epoch() -> None:
    sampler = ShuffledBatches(23, 5, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 5
    for batches in epochs_of(sampler, 3):
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(23))


def test_shuffled_batches_are_reproducible_and_change_each_epoch() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        sampler = ShuffledBatches(40, 8, True, torch.Generator().manual_seed(seed))
        return [torch.cat(batches) for batches in epochs_of(sampler, 3)]

    first, again, other = run(11), run(11), run(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[1], first[2])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize(("n_rows", "batch_size"), [(23, 5), (40, 8), (7, 7), (3, 10)])
def test_epoch_order_is_what_iterating_gives(n_rows: int, batch_size: int) -> None:
    def sampler() -> ShuffledBatches:
        return ShuffledBatches(n_rows, batch_size, True, torch.Generator().manual_seed(3))

    iterated, ordered = sampler(), sampler()
    for _ in range(3):  # the generator moves on alike, epoch after epoch
        batches = list(iterated)
        order, sizes = ordered.epoch_order()
        assert sizes == [len(b) for b in batches]
        assert torch.equal(order, torch.cat(batches))


def test_unshuffled_batches_are_in_order() -> None:
    batches = list(ShuffledBatches(10, 4, shuffle=False, generator=None))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_loader_with_workers_yields_the_same_batches() -> None:
    rng = np.random.default_rng(0)
    dataset = HW01Dataset(rng.normal(size=(37, 3)), rng.normal(size=37))

    def epochs(num_workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = make_loader(dataset, batch_size=8, shuffle=True, seed=5, num_workers=num_workers)
        return [batch for _ in range(2) for batch in loader]

    in_process, workers = epochs(0), epochs(2)
    assert len(in_process) == len(workers) == 10
    for (x0, y0), (x2, y2) in zip(in_process, workers, strict=True):
        assert torch.equal(x0, x2)
        assert torch.equal(y0, y2)
    first_epoch = torch.cat([y for _, y in in_process[:5]])
    assert torch.equal(first_epoch.sort().values, dataset.y.sort().values)
    assert not torch.equal(first_epoch, dataset.y)  # shuffled
