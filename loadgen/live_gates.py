"""A shadow's gates judged while it runs: every reporting window, the rows committed so far are judged again
(analysis/shadow/judge_run.py) into RUN_DIR/live/ (gates.json, summary.md, summary.html, as of that moment),
so a release manager watching a 48-hour shadow sees each gate's state and any breach as it happens.

Each judgement runs in a child process at the lowest CPU priority (nice 19), one at a time (a judgement still
running when the next window ends is not doubled), so it takes no CPU from the replay workers' sends and holds
no memory in the driver. The anytime-valid test makes looking every window free of extra false alarms. Gates
scored by a judge are left out while the shadow runs (the judge grades the answers after the replay); the
final judgement, RUN_DIR/gates.json, is made from every row when the replay ends.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from pathlib import Path
from types import TracebackType

from shadowreplay.analysis.shadow.gates_file import GatesFile
from shadowreplay.analysis.shadow.paired_requests import Sides
from shadowreplay.replay.schemas.run_dir import RunDir

LIVE_DIRNAME = "live"
MIN_INTERVAL_S = 5.0
"""No more often than this, however short the reporting window (a judgement reads every row so far)."""


def live_gates(gates: GatesFile) -> GatesFile | None:
    """The gates judged while the shadow runs: all but those scored by a judge; None when none is left."""
    kept = tuple(gate for gate in gates.gates if gate.scorer is None or gate.scorer.kind != "judge")
    return gates.model_copy(update={"gates": kept}) if kept else None


def _judge_once(run_dir: Path, sides: Sides, gates: GatesFile, out: Path) -> None:
    """One live judgement, in its own process (imports its own analysis)."""
    os.nice(19)
    from shadowreplay.analysis.shadow.judge_run import judge_run
    from shadowreplay.errors import ShadowReplayError

    try:
        judge_run(run_dir, sides, gates, out, prices=None)
    except ShadowReplayError:  # too early to judge (a side without rows yet): the next window will
        sys.exit(1)


class LiveGates:
    """`with LiveGates(run_dir, sides, gates):` around a shadow's replay. `judgements` counts those made."""

    def __init__(self, run_dir: Path, sides: Sides, gates: GatesFile, interval_s: float | None = None):
        self.run_dir = RunDir(run_dir)
        self.sides = sides
        self.gates = live_gates(gates)
        self.interval_s = max(interval_s if interval_s is not None else gates.window_s, MIN_INTERVAL_S)
        self.out = self.run_dir.path / LIVE_DIRNAME
        self.judgements = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-gates", daemon=True)
        self._context = multiprocessing.get_context("spawn")

    def __enter__(self) -> LiveGates:
        if self.gates is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        assert self.gates is not None
        while not self._stop.wait(self.interval_s):
            if not self.run_dir.result_shards():
                continue
            process = self._context.Process(
                target=_judge_once, args=(self.run_dir.path, self.sides, self.gates, self.out), daemon=True
            )
            process.start()
            while process.is_alive() and not self._stop.is_set():
                process.join(0.2)
            if process.is_alive():  # the replay ended: the final judgement replaces this one
                process.terminate()
                process.join(5.0)
                continue
            if process.exitcode == 0:
                self.judgements += 1
            else:
                self.failures += 1
