"""Seeds, threads, subnormal floats, the device and the global random states."""

from __future__ import annotations

import io
import random
import sys

import numpy as np
import pytest
import torch

from covidreg.errors import CovidRegError
from covidreg.reproducibility import (
    denormals_flushed,
    flushing_denormals,
    global_rng_state,
    resolve_device,
    seed_everything,
    set_global_rng_state,
    set_threads,
)


def draws() -> tuple[float, float, list[float], torch.Tensor]:
    """One draw from each global generator, and a dropout-like mask."""
    mask = torch.nn.functional.dropout(torch.ones(64), p=0.5, training=True)
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), mask


def test_seed_everything_makes_runs_bit_identical() -> None:
    seed_everything(7)
    first = draws()
    seed_everything(7)
    second = draws()
    assert first[:3] == second[:3]
    assert torch.equal(first[3], second[3])
    seed_everything(8)
    other = draws()
    assert other[0] != first[0] and other[1] != first[1] and other[2] != first[2]


@pytest.mark.parametrize("deterministic", [True, False])
def test_seed_everything_sets_deterministic_kernels(deterministic: bool) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(0, deterministic)
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.backends.cudnn.benchmark is not deterministic
    finally:
        seed_everything(0, before)


def test_seed_everything_takes_seeds_beyond_numpys_range() -> None:
    seed_everything(2**40 + 3)  # fold seeds are 32-bit, but a user's --seed need not be
    assert torch.initial_seed() == 2**40 + 3
    first = np.random.rand()
    np.random.seed(3)
    assert np.random.rand() == first


def test_set_threads() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
        set_threads(0)  # 0: leave it as it is
        assert torch.get_num_threads() == 2
        set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


FLUSH_SUPPORTED = torch.set_flush_denormal(False)  # False is also the default


@pytest.mark.skipif(
    not FLUSH_SUPPORTED and sys.platform != "linux", reason="this CPU cannot flush subnormals"
)
def test_denormals_flushed_sets_the_mode_and_restores_it() -> None:
    tiny = torch.full((1,), 2e-38)
    assert not flushing_denormals()
    assert (tiny * 0.25).item() > 0  # IEEE: a subnormal result
    with denormals_flushed(True):
        assert flushing_denormals()
        assert (tiny * 0.25).item() == 0.0
        with denormals_flushed(False):
            assert not flushing_denormals()
            assert (tiny * 0.25).item() > 0
        assert flushing_denormals()
    assert not flushing_denormals()
    with pytest.raises(KeyError), denormals_flushed(True):
        raise KeyError("boom")
    assert not flushing_denormals()  # restored on the way out of an error too


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(CovidRegError, match="no CUDA GPU is available; use --device cpu"):
            resolve_device("cuda")


def test_global_rng_state_round_trip() -> None:
    seed_everything(5)
    draws()
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and one in Python's
    state = global_rng_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # as a training state saves it
    expected = draws(), np.random.randn(), random.gauss(0, 1)
    seed_everything(99)  # whatever runs in between
    draws()
    buffer.seek(0)
    set_global_rng_state(torch.load(buffer, weights_only=True))
    got = draws(), np.random.randn(), random.gauss(0, 1)
    assert got[0][:3] == expected[0][:3]
    assert torch.equal(got[0][3], expected[0][3])
    assert got[1:] == expected[1:]
