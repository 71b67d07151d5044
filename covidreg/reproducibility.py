"""Seeds, deterministic kernels, threads, subnormal floats and the device: what makes a rerun
give the same bits, and the random states a resumed run restores."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from covidreg.errors import CovidRegError


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's kernels (0: leave torch's default).

    One thread by default: a reduction split over threads sums in an order that depends on
    their number, so with torch's default (one per core) a result would depend on the cores.
    """
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def flushing_denormals() -> bool:
    """Whether this thread's CPU kernels flush subnormal floats to zero right now."""
    return (torch.full((1,), 2e-38) * 0.25).item() == 0.0  # 5e-39 is subnormal


@contextlib.contextmanager
def denormals_flushed(mode: bool) -> Iterator[None]:
    """Flush subnormal floats to zero (or not) in this thread's CPU kernels, then restore.

    ``torch.set_flush_denormal`` sets a processor flag for the whole thread, so it is scoped to
    the training loop: code around it keeps IEEE arithmetic.
    """
    before = flushing_denormals()
    torch.set_flush_denormal(mode)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _set_deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode)`` without its 2-second import.

    The public call also imports torch._inductor to set its flag, which only torch.compile reads
    and covidreg does not use; unless inductor is already loaded, set the ATen flag directly.
    """
    if torch.are_deterministic_algorithms_enabled() == mode:
        return
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode)
    else:
        setter(mode)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally force deterministic kernels."""
    if deterministic:
        # cuBLAS reads this when CUDA starts: it must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    _set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CovidRegError(
            "device 'cuda' requested but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states, as tensors and plain types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
            "name": str(name),
        },
        "python": [version, list(internal), gauss],
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``global_rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state((saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
