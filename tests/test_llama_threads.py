"""Adaptive llama.cpp threads: the rule, the CPU accounting, a real busy neighbour, taskset."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("llama_cpp")

from oblix_core.errors import ConfigError
from oblix_llamacpp.options import thread_option
from oblix_llamacpp.threads import CpuSample, ThreadChooser, physical_cores, threads_for


@pytest.mark.parametrize(
    ("others", "cores", "threads", "waiting"),
    [
        (0.0, 2, 2, 0.0),
        (0.2, 2, 2, 0.0),  # the agents, an editor: no thread given up
        (0.3, 2, 1, 0.0),
        (1.0, 2, 1, 0.0),
        (1.9, 2, 1, 0.0),
        (5.0, 2, 1, 0.0),  # never fewer than one
        (0.0, 8, 8, 0.0),
        (1.0, 8, 7, 0.0),
        (1.3, 8, 6, 0.0),
        (20.0, 8, 1, 0.0),
        (0.0, 1, 1, 0.0),
        (1.9, 2, 2, 2.0),  # runnable threads fill both cores: share per thread, use both
        (1.0, 2, 1, 1.0),  # one busy neighbour: one core is free, use it alone
        (6.5, 8, 8, 9.0),
    ],
)
def test_every_core_the_others_leave_free(others: float, cores: int, threads: int, waiting: float) -> None:
    assert threads_for(others, cores, waiting) == threads


class RecordedSamples:
    """A test double for the CPU counters: samples given in advance, returned in order."""

    def __init__(self, *samples: tuple[float, float, float]) -> None:
        self.samples = [CpuSample(*s) for s in samples]

    def __call__(self) -> CpuSample:
        return self.samples.pop(0)


def test_own_cpu_time_is_not_load_and_short_windows_keep_the_choice() -> None:
    samples = RecordedSamples(
        (0.0, 100.0, 10.0),  # at construction
        (0.1, 100.2, 10.0),  # 0.1 s later: too short to measure, the first choice stands
        (1.0, 101.9, 11.9),  # 1.9 s busy in 1 s, all of it this process (the model): idle
        (2.0, 103.9, 12.9),  # 2.0 s busy, 1.0 s of it ours: the others kept 1 core busy
    )
    chooser = ThreadChooser(cores=2, sample=samples)
    assert chooser.choose() == 2
    assert chooser.choose() == 2 and chooser.others == pytest.approx(0.0)
    assert chooser.choose() == 1 and chooser.others == pytest.approx(1.0)
    assert chooser.describe() == {
        "mode": "adaptive",
        "cores": 2,
        "last": 1,
        "others_busy": 1.0,
        "others_runnable": 0.0,
    }


def test_a_machine_full_of_runnable_threads_gets_every_core() -> None:
    """Others busy on ~1.8 of 2 cores with 6 runnable threads: no core is free to protect,
    and the scheduler shares per thread, so both cores get a thread."""
    samples = RecordedSamples(
        (0.0, 100.0, 10.0, 6),
        (1.0, 102.0, 10.2, 6),  # 1.8 cores used by others, 6 of their threads runnable
        (2.0, 103.0, 10.2, 0),  # the crowd is leaving: 6 then 0 runnable, 3 on average
        (3.0, 104.0, 10.2, 0),  # one busy neighbour left (1 core, no queue): one free core
    )
    chooser = ThreadChooser(cores=2, sample=samples)
    assert chooser.choose() == 2 and chooser.waiting == 6
    assert chooser.choose() == 2 and chooser.waiting == pytest.approx(3.0)
    assert chooser.choose() == 1 and chooser.others == pytest.approx(1.0) and chooser.waiting == 0


def _spin() -> None:  # pragma: no cover - runs in a child process
    while True:
        pass


@pytest.mark.serial  # reads the machine's CPU load: another worker's tests move it
@pytest.mark.skipif(physical_cores() < 2, reason="needs at least 2 cores to give one up")
def test_a_real_busy_neighbour_costs_a_thread() -> None:
    neighbour = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    neighbour.start()
    chooser = ThreadChooser()
    chooser.start()
    try:
        time.sleep(1.0)  # a few background samples with the neighbour running
        chosen = chooser.choose()
        assert chooser.others >= 0.5 and chooser.waiting >= 1  # the neighbour is seen
        # on a quiet machine it costs a thread; on one already full of runnable threads
        # (a shared CI box) every core is used, by the rule
        assert chosen == threads_for(chooser.others, chooser.cores, chooser.waiting)
        if chooser.waiting < chooser.cores:
            assert chosen < chooser.cores
    finally:
        chooser.stop()
        neighbour.kill()
        neighbour.join()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_cores_allowed_by_taskset_are_the_limit() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from oblix_llamacpp.threads import ThreadChooser, physical_cores; "
        "print(physical_cores(), ThreadChooser().cores)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1"]


def test_n_threads_option() -> None:
    assert thread_option(None) is None and thread_option("auto") is None and thread_option(" AUTO ") is None
    assert thread_option(3) == 3 and thread_option("2") == 2
    for bad in (0, -1, "many", True, 1.5, ""):
        with pytest.raises(ConfigError, match="n_threads must be"):
            thread_option(bad)
