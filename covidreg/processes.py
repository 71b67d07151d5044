"""Stacks of models trained side by side in forked processes.

The processes only schedule the work: which stacks there are is decided before (from the
config, ``engine.stack_groups``), each stack trains the same way in whichever process runs it,
and what a process sends back is the stack's result. So the results are the same bits for any
number of processes, and on any number of cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from covidreg.config import Config
from covidreg.engine import FitResult, FittedModel, Member
from covidreg.errors import CovidRegError

# trains one stack in this process and returns its members' fitted models
TrainStack = Callable[[int], list[FittedModel]]


def can_fork() -> bool:
    """Forking a process that has torch loaded is safe on Linux; elsewhere one process."""
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_count(cfg: Config, n_stacks: int, device: torch.device) -> int:
    """``cfg.fold_processes``, or for 0 the available cores over the threads each process
    uses; at most one per stack; one on a GPU or where forking is unavailable."""
    if n_stacks < 2 or device.type != "cpu" or not can_fork():
        return 1
    wanted = cfg.fold_processes
    if wanted == 0:
        wanted = available_cpus() // (cfg.threads or torch.get_num_threads())
    return max(1, min(wanted, n_stacks))


def _end_with(parent: int) -> None:
    """Have the kernel end this process when its parent dies, however it dies (SIGKILL
    included), so that no process trains on for nobody."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _child(stacks: list[int], train: TrainStack, parent: int, results: Connection) -> None:
    """A forked process's work: train its stacks one after another, send back each one's
    results as it ends, then leave at once (``os._exit``: none of the parent's exit work,
    such as flushing its buffered output, runs twice)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        _end_with(parent)
        for index in stacks:
            fitted = train(index)
            outcome = [
                (f.result, {k: v.cpu().numpy() for k, v in f.model.state_dict().items()})
                for f in fitted
            ]
            results.send(("done", index, outcome))
    except CovidRegError as exc:
        results.send(("error", None, str(exc)))
    except BaseException:
        code = 1
        with contextlib.suppress(BaseException):
            results.send(("crash", None, traceback.format_exc()))
    finally:
        os._exit(code)


@dataclass
class _Child:
    process: Any  # multiprocessing's forked Process
    results: Connection
    stacks: list[int]
    received: int = 0


class StackProcesses:
    """Stacks ``1, 1 + n, ...`` of ``n`` processes trained by forked children: child c trains
    stacks ``c, c + n, ...``; this process trains stacks ``0, n, 2n, ...`` itself.

    ``poll`` (after any epoch here) takes in the results that have arrived and ``wait`` the
    rest; each arriving stack's members get their models' weights and results. Leaving the
    ``with`` block ends any child still running.
    """

    def __init__(self, stacks: list[list[Member]], n_processes: int, train: TrainStack) -> None:
        self.stacks = stacks
        self.children: list[_Child] = []
        context = multiprocessing.get_context("fork")
        try:
            for c in range(1, n_processes):
                mine = list(range(c, len(stacks), n_processes))
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, args=(mine, train, os.getpid(), sender), daemon=True
                )
                process.start()
                sender.close()
                self.children.append(_Child(process, receiver, mine))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> StackProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> None:
        for child in self.children:
            while child.received < len(child.stacks) and child.results.poll():
                self._receive(child)

    def wait(self) -> None:
        for child in self.children:
            while child.received < len(child.stacks):
                self._receive(child)

    def close(self) -> None:
        for child in self.children:
            if child.process.is_alive():
                child.process.terminate()
            child.process.join()
            child.results.close()

    def _receive(self, child: _Child) -> None:
        try:
            kind, index, payload = child.results.recv()
        except EOFError:
            child.process.join()
            child.received = len(child.stacks)
            raise CovidRegError(
                f"the process training stacks {_names(child.stacks)} ended without its results "
                f"(exit code {child.process.exitcode}); rerun with --fold-processes 1 to train "
                "every stack in one process"
            ) from None
        if kind == "error":
            child.received = len(child.stacks)
            raise CovidRegError(payload)
        if kind == "crash":
            child.received = len(child.stacks)
            raise RuntimeError(
                f"training stacks {_names(child.stacks)} failed in its process:\n{payload}"
            )
        child.received += 1
        for member, (result, state) in zip(self.stacks[index], payload, strict=True):
            _receive_member(member, result, state)


def _receive_member(member: Member, result: FitResult, state: dict[str, Any]) -> None:
    member.model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    member.history = list(result.history)
    member.running = False
    member.fitted = FittedModel(member.model, result, member.mean, member.std, member.lr_finder)


def _names(stacks: list[int]) -> str:
    return ", ".join(str(i + 1) for i in stacks)
