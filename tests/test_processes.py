"""Stacks trained in forked processes: the same bits for any number of processes, callbacks in
fold order, and children that fail, crash, die or outlive their parent."""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from covidreg import processes
from covidreg.config import Config
from covidreg.crossval import FoldEvents, cross_validate, fold_members, make_folds
from covidreg.engine import FittedModel, Member, fit_members, stack_groups
from covidreg.errors import CovidRegError
from covidreg.experiment import LoadedData, load_data
from covidreg.processes import StackProcesses, available_cpus, can_fork, process_count
from tests.test_engine import assert_bit_identical

# the module whose fit_members a test replaces
cv = importlib.import_module("covidreg.crossval")

CPU = torch.device("cpu")
N_FOLDS = 5
needs_fork = pytest.mark.skipif(
    not can_fork(), reason="stack processes fork, which covidreg does on Linux only"
)


def make_cfg(train_csv: str, **overrides: Any) -> Config:
    # 4 states x 30 windows, blocked 5-fold, purge 2: 88, 80, 80, 80, 88 training rows, so with
    # batch_size 16 the folds have 6 or 5 batches and the 88-row folds a short last batch of 8.
    values: dict[str, Any] = {
        "train_csv": train_csv,
        "test_csv": "",
        "epochs": 25,
        "batch_size": 16,
        "patience": 0,
        "hidden": [16, 8],
        "lr": 3e-3,
        "checkpoint_every": 0,
        "stack_size": 2,  # stacks of folds 1-2, 3-4 and 5
        "stop_on": "valid",  # the folds fit the rows above (auto would stop on their tails)
        "device": "cpu",  # processes share CPU cores; on a GPU there is one process
    }
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def train_csv(hw01_files: dict[str, Path]) -> str:
    return str(hw01_files["train"])


def setup(cfg: Config) -> tuple[LoadedData, list[tuple[np.ndarray, np.ndarray]]]:
    data = load_data(cfg, with_test=False)
    return data, make_folds(cfg, data, N_FOLDS)


def stacks_of(cfg: Config) -> list[list[Member]]:
    data, folds = setup(cfg)
    members = fold_members(cfg, data, folds)
    return [[members[k] for k in group] for group in stack_groups(cfg, len(members))]


# --- how many processes --------------------------------------------------------------------------


def test_process_count_resolves_auto_and_caps_at_the_stacks(
    train_csv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "can_fork", lambda: True)
    monkeypatch.setattr(processes, "available_cpus", lambda: 8)
    assert make_cfg(train_csv).fold_processes == 0  # the default: the cores decide
    cases = [
        ({"fold_processes": 0, "threads": 1}, 5, 5),  # one per stack
        ({"fold_processes": 0, "threads": 1}, 20, 8),  # one per core
        ({"fold_processes": 0, "threads": 2}, 20, 4),  # cores over threads
        ({"fold_processes": 0, "threads": 3}, 20, 2),
        ({"fold_processes": 0, "threads": 16}, 20, 1),  # never none
        ({"fold_processes": 3}, 5, 3),
        ({"fold_processes": 9}, 5, 5),
        ({"fold_processes": 4}, 1, 1),  # one stack: nothing to share
    ]
    for changes, n_stacks, expected in cases:
        cfg = make_cfg(train_csv, **changes)
        assert process_count(cfg, n_stacks, CPU) == expected, (changes, n_stacks)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert process_count(make_cfg(train_csv, threads=0), 20, CPU) == 2  # torch's default threads
    many = make_cfg(train_csv, fold_processes=4)
    assert process_count(many, 5, torch.device("cuda")) == 1  # one process holds the GPU
    monkeypatch.setattr(processes, "can_fork", lambda: False)
    assert process_count(many, 5, CPU) == 1
    assert process_count(make_cfg(train_csv), 5, CPU) == 1


def test_available_cpus_and_fork() -> None:
    if sys.platform == "linux":
        assert can_fork()
        assert available_cpus() == len(os.sched_getaffinity(0))
    assert available_cpus() >= 1


# --- the same bits for any number of processes ---------------------------------------------------


@needs_fork
@pytest.mark.parametrize("stack_size", [1, 2])
def test_any_number_of_processes_gives_the_same_bits(
    train_csv: str, stack_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However the stacks are shared between processes, each fold trains exactly as in one:
    the same histories and weights, bit for bit (dropout and early stopping included)."""
    cfg = make_cfg(
        train_csv, epochs=40, lr=1e-2, patience=4, dropout=0.2, hidden=[16], stack_size=stack_size
    )
    data, folds = setup(cfg)
    expected = cross_validate(cfg, data, folds, processes=False)
    assert len({len(f.result.history) for f in expected}) > 1  # folds stopped at their own epochs
    children: list[int] = []
    start = StackProcesses.__init__

    def counted(self: StackProcesses, *args: Any) -> None:
        start(self, *args)
        children.append(len(self.children))

    monkeypatch.setattr(StackProcesses, "__init__", counted)
    n_stacks = len(stack_groups(cfg, N_FOLDS))
    for n_processes in (1, 2, 3):
        run_cfg = dataclasses.replace(cfg, fold_processes=n_processes)
        got = cross_validate(run_cfg, data, folds)
        assert children[-1] == min(n_processes, n_stacks) - 1  # the forked ones
        assert len(got) == len(expected) == N_FOLDS
        assert_bit_identical(expected, got)


def _recording_events(log: list[tuple[Any, ...]]) -> FoldEvents:
    return FoldEvents(
        on_fold_start=lambda k, n: log.append(("start", k, n)),
        on_epoch=lambda r, stopper: log.append(
            ("epoch", r.epoch, r.valid_loss, stopper.best_epoch, stopper.bad_epochs)
        ),
        on_fold_fitted=lambda k, fitted: log.append(("fitted", k, fitted.result.best_epoch)),
    )


@needs_fork
def test_callbacks_fire_in_fold_order_with_processes(train_csv: str) -> None:
    cfg = make_cfg(train_csv, epochs=30, lr=1e-2, patience=3, stack_size=1)
    data, folds = setup(cfg)
    expected: list[tuple[Any, ...]] = []
    fitted = cross_validate(cfg, data, folds, _recording_events(expected), processes=False)
    assert [e for e in expected if e[0] == "start"] == [
        ("start", k, N_FOLDS) for k in range(1, N_FOLDS + 1)
    ]
    assert [e[1:] for e in expected if e[0] == "fitted"] == [
        (k, f.result.best_epoch) for k, f in enumerate(fitted, start=1)
    ]
    for n_processes in (2, 3):
        log: list[tuple[Any, ...]] = []
        trained_here: set[int] = set()
        events = _recording_events(log)
        events.after_epoch = lambda stack, epoch, members, seen=trained_here: seen.add(stack)
        run_cfg = dataclasses.replace(cfg, fold_processes=n_processes)
        cross_validate(run_cfg, data, folds, events)
        assert log == expected, n_processes
        assert trained_here == set(range(0, N_FOLDS, n_processes))  # the others in children
        assert [e[0] for e in log[:2]] == ["start", "epoch"]  # fold 1 is reported live


# --- children that fail, crash or die ------------------------------------------------------------


@needs_fork
def test_an_error_in_a_child_is_raised_here(train_csv: str) -> None:
    cfg = make_cfg(
        train_csv, optimizer="sgd", lr=10.0, momentum=0.0, normalize=False, target="level"
    )
    with pytest.raises(CovidRegError, match="diverged at epoch 1") as expected:
        fit_members(cfg, stacks_of(cfg)[0])
    stacks = stacks_of(cfg)
    assert len(stacks) == 3  # the child trains stack 2 (folds 3 and 4)
    with (
        StackProcesses(stacks, 2, lambda index: fit_members(cfg, stacks[index])) as others,
        pytest.raises(CovidRegError) as got,
    ):
        others.wait()
    assert str(got.value) == str(expected.value)


@needs_fork
def test_an_error_in_a_child_stops_cross_validate(
    train_csv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = os.getpid()
    real = cv.fit_members

    def failing_in_children(cfg: Config, members: list[Member], **kwargs: Any) -> Any:
        if os.getpid() != here:
            raise CovidRegError("the stack failed in its process")
        return real(cfg, members, **kwargs)

    monkeypatch.setattr(cv, "fit_members", failing_in_children)
    cfg = make_cfg(train_csv, stack_size=1, fold_processes=2)
    data, folds = setup(cfg)
    with pytest.raises(CovidRegError, match=r"^the stack failed in its process$"):
        cross_validate(cfg, data, folds)
    assert len(cross_validate(cfg, data, folds, processes=False)) == N_FOLDS


@needs_fork
def test_a_crash_in_a_child_carries_its_traceback() -> None:
    def broken(index: int) -> list[FittedModel]:
        raise ValueError(f"stack {index} broken on purpose")

    with (
        StackProcesses([[], [], []], 3, broken) as others,
        pytest.raises(RuntimeError, match="training stacks 2 failed in its process") as got,
    ):
        others.wait()
    assert "Traceback (most recent call last)" in str(got.value)
    assert "ValueError: stack 1 broken on purpose" in str(got.value)


def _sleep_forever(index: int) -> list[FittedModel]:
    while True:
        time.sleep(0.05)


@needs_fork
def test_a_child_that_dies_is_reported() -> None:
    with StackProcesses([[], [], [], []], 2, _sleep_forever) as others:
        (child,) = others.children
        assert child.stacks == [1, 3]
        os.kill(child.process.pid, signal.SIGKILL)
        with pytest.raises(CovidRegError, match="stacks 2, 4 ended without its results") as got:
            others.wait()
    assert "exit code -9" in str(got.value)
    assert "--fold-processes 1" in str(got.value)
    assert not child.process.is_alive()


@needs_fork
def test_leaving_early_ends_the_children() -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        StackProcesses([[], [], []], 3, _sleep_forever) as others,
    ):
        assert [c.process.is_alive() for c in others.children] == [True, True]
        raise KeyboardInterrupt
    assert [c.process.is_alive() for c in others.children] == [False, False]
    assert [c.process.exitcode for c in others.children] == [-signal.SIGTERM] * 2


PARENT_SCRIPT = """
import time
from covidreg.processes import StackProcesses

def sleep_forever(index):
    while True:
        time.sleep(0.05)

others = StackProcesses([[], []], 2, sleep_forever)
print(others.children[0].process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


@needs_fork
def test_a_child_ends_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()  # SIGKILL: no Python clean-up runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
