"""Stopping a search cleanly when asked to, so that the next driver (``--resume``) continues it with nothing lost.

SIGUSR1 (SLURM's warning before a job's time limit, ``#SBATCH --signal=B:USR1@300``) and SIGTERM (preemption,
``scancel``, ``ray job stop``) ask the driver to stop:

- before the search has started (Ray starting, data being prepared) it stops at once: there is nothing to save;
- during the search no trial starts any more, and each running trial finishes the epoch it is in (that epoch's
  checkpoint is written, as after every epoch) and then waits. Once every running trial has reached that point, or
  ``stop_within_s`` has passed, or a trial failed meanwhile (its node is going down too), Ray Tune writes the
  experiment's state and the search returns. The Optuna study is saved at every tell already.

``run_search.py`` then exits with EXIT_INTERRUPTED (75, sysexits' "temporary failure"): interrupted, resumable.
SIGINT (Ctrl-C) keeps Ray Tune's own meaning: stop now and save (the epochs in progress are trained again later).

A full disk stops the search the same way: a trial whose checkpoint cannot be written for want of space
(``storage_full``) says so to the driver, keeps its previous checkpoint, and waits; the driver stops the search and
``run_search.py`` exits with EXIT_DISK_FULL (74) and one line naming the full file system. Once space is freed,
``--resume`` continues every trial from its last whole checkpoint (the epoch that could not be saved is trained again).
Ending the trial instead would not help: every trial after it would meet the same disk.

The trials learn of the request through Ray's key-value store (one key per driver run), so they need no shared
folder. The driver's state lives in this module, not in the Tune callback: Ray pickles callbacks into the experiment
and a resumed search gets the old objects back.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.experimental import internal_kv

from tune_fusion.cli import STOP_SIGNALS
from tune_fusion.console import say
from tune_fusion.errors import Interrupted
from tune_fusion.names import DEFAULT_STOP_WITHIN_S

log = logging.getLogger(__name__)

__all__ = ["StopRequest", "StopWhenAsked", "current", "stop_signals", "stopping", "storage_full", "trial_should_wait",
           "wait_to_be_stopped"]

_KV_NAMESPACE = "tune_fusion"
FULL_CHECK_EVERY_S = 1.0  # how often the driver looks for a trial that found the disk full
WHY = {"SIGUSR1": "the job's time limit is near", "SIGTERM": "the job is being stopped", "SIGINT": "Ctrl-C"}


@dataclass
class StopRequest:
    """One driver run's stop request: which signal asked first and when, and how the stopping goes."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stop_within_s: float = DEFAULT_STOP_WITHIN_S
    signal: str | None = None
    asked_at: float | None = None  # time.monotonic()
    searching: bool = False  # Tune's loop runs: a signal only asks (else it raises Interrupted)
    announced: bool = False
    trial_failed: bool = False
    tune_stop: Any = None  # Ray Tune's own SIGUSR1 handler: ends the loop and writes the experiment's state
    done: bool = False
    disk_full: str | None = None  # the first trial's account of the full disk that stopped the search
    full_seen: set[str] = field(default_factory=set)  # the trials that told of it
    full_checked: float = 0.0  # time.monotonic() of the last look

    def ask(self, signum: int) -> None:
        if not self.asked:
            self.signal, self.asked_at = signal.Signals(signum).name, time.monotonic()

    def ask_for_full_disk(self, why: str) -> None:
        self.disk_full = self.disk_full or why
        self.asked_at = self.asked_at or time.monotonic()

    @property
    def asked(self) -> bool:
        return self.signal is not None or self.disk_full is not None

    @property
    def reason(self) -> str:
        if self.signal is None and self.disk_full is not None:
            return "a full disk"
        return f"{self.signal} ({WHY.get(self.signal or '', 'asked to stop')})"


_current: StopRequest | None = None  # the running driver's request (one search per process at a time)


def current() -> StopRequest | None:
    return _current


def _on_signal(signum: int, frame: Any) -> None:
    request = _current
    if request is None:  # between two searches of one process
        return
    request.ask(signum)
    if not request.searching:
        raise Interrupted(f"stopped by {request.reason} before the search started; nothing to save: run the same "
                          "command again (with --resume if the search had started before)")


@contextmanager
def stop_signals(stop_within_s: float = DEFAULT_STOP_WITHIN_S) -> Iterator[StopRequest]:
    """Catch SIGUSR1 and SIGTERM for the block (in the main thread; elsewhere signals keep their handlers); yields
    the request, which says afterwards whether one came."""
    global _current
    request = StopRequest(stop_within_s=stop_within_s)
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS} if main else {}
    _current = request
    try:
        yield request
    finally:
        _current = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if request.asked and internal_kv._internal_kv_initialized():
            for key in (_key(request.run_id), _waiting_key(request.run_id), _full_key(request.run_id)):
                internal_kv._internal_kv_del(key, del_by_prefix=True, namespace=_KV_NAMESPACE)


def _key(run_id: str) -> str:
    return f"stop:{run_id}"


def _waiting_key(run_id: str, trial_id: str = "") -> str:
    return f"waiting:{run_id}:{trial_id}"


def _full_key(run_id: str, trial_id: str = "") -> str:
    return f"full:{run_id}:{trial_id}"


def stopping() -> bool:
    """Whether the driver in this process has been asked to stop (no new trial should start)."""
    return _current is not None and _current.asked


def trial_should_wait(run_id: str | None) -> bool:
    """In a trial: whether its driver asked the trials to stop (called between epochs; a few ms)."""
    if not run_id or not internal_kv._internal_kv_initialized():
        return False
    return internal_kv._internal_kv_get(_key(run_id), namespace=_KV_NAMESPACE) is not None


def wait_to_be_stopped(run_id: str, trial_id: str) -> None:
    """In a trial with nothing unsaved (its last epoch's checkpoint is written, or it has not started): say so to
    the driver and train nothing more; the driver ends the trial (and its process)."""
    internal_kv._internal_kv_put(_waiting_key(run_id, trial_id), b"1", namespace=_KV_NAMESPACE)
    while True:
        time.sleep(60)


def storage_full(run_id: str, trial_id: str, why: str) -> None:
    """In a trial whose checkpoint could not be written for want of space (``why`` says where): tell the driver,
    which stops the search, and train nothing more. The trial's previous checkpoint is whole; a resume goes on
    from it."""
    internal_kv._internal_kv_put(_full_key(run_id, trial_id), why.encode(), namespace=_KV_NAMESPACE)
    wait_to_be_stopped(run_id, trial_id)


def _look_for_full_disk(request: StopRequest) -> None:
    """The driver's side of ``storage_full``: a console line for each trial that found the disk full; the first one
    stops the search."""
    if time.monotonic() - request.full_checked < FULL_CHECK_EVERY_S or not internal_kv._internal_kv_initialized():
        return
    request.full_checked = time.monotonic()
    for key in internal_kv._internal_kv_list(_full_key(request.run_id), namespace=_KV_NAMESPACE):
        trial_id = key.decode().rsplit(":", 1)[-1]
        if trial_id in request.full_seen:
            continue
        request.full_seen.add(trial_id)
        why = (internal_kv._internal_kv_get(key, namespace=_KV_NAMESPACE) or b"").decode()
        say(f"trial {trial_id} could not save its epoch: {why.split(': free space', 1)[0]}")
        request.ask_for_full_disk(why)


class StopWhenAsked(tune.Callback):
    """Tune's side of a stop request (all its state is in this module's ``current()`` request)."""

    def setup(self, **info: Any) -> None:
        request = _current
        if request is None or threading.current_thread() is not threading.main_thread():
            return
        # Tune has just made SIGUSR1 (and SIGINT) end the run at once; keep its handler to end the run with, and let
        # SIGUSR1 and SIGTERM only ask, from here on
        request.tune_stop = signal.getsignal(signal.SIGUSR1)
        request.searching = True
        for signum in STOP_SIGNALS:
            signal.signal(signum, _on_signal)
        tune_interrupt = signal.getsignal(signal.SIGINT)
        if callable(tune_interrupt):  # Ctrl-C: Tune's own immediate stop, remembered as a stop

            def on_interrupt(signum: int, frame: Any) -> None:
                request.ask(signum)
                request.done = True
                tune_interrupt(signum, frame)

            signal.signal(signal.SIGINT, on_interrupt)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        request = _current
        if request is None or request.done:
            return
        _look_for_full_disk(request)
        if not request.asked:
            return
        if not request.announced:
            request.announced = True
            internal_kv._internal_kv_put(_key(request.run_id), b"1", namespace=_KV_NAMESPACE)
            say(f"stop asked by {request.reason}: no new trial starts; running trials end their current epoch "
                f"(for at most {request.stop_within_s:g} s), then the search is saved for --resume")
        idle = {key.decode().rsplit(":", 1)[-1] for key in internal_kv._internal_kv_list(
            _waiting_key(request.run_id), namespace=_KV_NAMESPACE)}
        waiting = [t.trial_id for t in trials if t.status == "RUNNING" and t.trial_id not in idle]
        late = time.monotonic() - (request.asked_at or 0.0) > request.stop_within_s
        if waiting and not late and not request.trial_failed:
            return
        request.done = True
        if waiting:
            why = "a trial failed meanwhile" if request.trial_failed else f"{request.stop_within_s:g} s passed"
            say(f"stopping now ({why}): {len(waiting)} trial(s) lose the epoch they are in")
        else:
            say("every running trial has saved its epoch: saving the search")
        if request.tune_stop is not None and callable(request.tune_stop):
            request.tune_stop(signal.SIGUSR1, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if stopping():
            _current.trial_failed = True
