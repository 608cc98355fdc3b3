"""`capacity --verify`: the plan's fleet checked by replaying the log at the planned volume against N - 1,
N and N + 1 replicas of the target (N: the plan's replicas): N should meet the SLOs and N - 1 should
not, and all three measure the simulation's error.

Each replay is the real `replay` (replay/run/replay_session.py) into PLAN_DIR/verify/<target>-<n>-replicas,
the target at n replicas: the first n of its `endpoints`, or `vllm.replicas: n` for a kind vllm target
(n servers started). The measured percentiles are the run summary's over every request (no warm-up:
production has none), its lengths cut as the sweep cut them (its --max-prompt-tokens and
--max-completion-tokens, so the replays ask for what the calibration measured); the SLOs are judged
as the plan judged them. Beside each, the fleet simulation
on the same requests (the replay's own scheduled sends), so the simulator's error is measured where
its answer can be checked: (predicted - measured) / measured per metric. Where the replicas it started
share a host's CPUs (kind vllm on a host without GPUs), each check carries a warning: they slow each
other, which the fleet on machines of its own would not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowreplay.analysis.capacity.fleet_simulation import FleetSimulator, ReplicaService
from shadowreplay.analysis.capacity.traffic_volume import TrafficVolume
from shadowreplay.analysis.metrics.slo import parse_slos
from shadowreplay.errors import UserError
from shadowreplay.loadgen.volume import volume_hook
from shadowreplay.replay.schemas.run_dir import RunDir
from shadowreplay.replay.targets.config import TargetConfig, load_targets

CHECKED = ("ttft", "tpot", "e2e")  # the metrics whose p95 is set beside the prediction


@dataclass(frozen=True)
class VerifyRequest:
    log: Path
    target_files: list[Path]
    plan_dir: Path
    volume: TrafficVolume | None  # the plan's; None: the log's own
    duration: str | None = None  # replay only this much of the log (at the volume), e.g. 10m
    workers: int | None = None
    worker_cpus: list[int] | None = None


def fleet_target(target: TargetConfig, replicas: int) -> TargetConfig:
    """`target` at `replicas` replicas (module docstring)."""
    where = target.source or target.name
    if target.endpoints:
        if len(target.endpoints) < replicas:
            raise UserError(
                f"{where}: --verify replays {replicas} replicas, but the target lists {len(target.endpoints)} "
                "endpoints (list one URL per replica, at least as many as the plan's replicas)"
            )
        picked = list(target.endpoints[:replicas])
        return target.model_copy(update={"endpoints": picked, "base_url": picked[0]})
    if target.kind == "vllm" and target.vllm is not None:
        return target.model_copy(update={"vllm": target.vllm.model_copy(update={"replicas": replicas})})
    if replicas == 1:
        return target
    raise UserError(
        f"{where}: --verify needs {replicas} replicas: give the target `endpoints:` (one URL per replica) "
        "or make it kind vllm"
    )


def verify_plan(plan: dict[str, Any], request: VerifyRequest, say: Callable[[str], None] = print) -> list[dict]:
    """Replay every plan's N - 1, N and N + 1 (module docstring); returns the checks, also plan["verify"]."""
    from shadowreplay.analysis.data.run_data import ANALYSIS_COLUMNS, load_run
    from shadowreplay.analysis.summary.run_summary import summarize
    from shadowreplay.replay.run.replay_session import ReplayRequest, replay_log

    targets = {target.name: target for target in load_targets(request.target_files)}
    checks: list[dict] = []
    for entry in plan["plans"]:
        if entry["replicas"] is None:
            say(f"verify: {entry['target']} has no plan to verify")
            continue
        target = targets.get(entry["target"])
        if target is None:
            raise UserError(
                f"--verify: no --target file names {entry['target']!r} (the sweep's target); "
                f"given: {', '.join(sorted(targets)) or 'none'}"
            )
        slos = parse_slos(entry["slos"])
        bounds = next(c["length_bounds"] for c in plan["capacities"] if c["sweep"] == entry["sweep"])
        service = ReplicaService.from_sweep(entry["sweep"])
        sizes = [size for size in (entry["replicas"] - 1, entry["replicas"], entry["replicas"] + 1) if size >= 1]
        for size in sizes:
            run_dir = request.plan_dir / "verify" / f"{entry['target']}-{size}-replicas"
            say(f"verify: replaying {request.log} at {plan['demand']['volume']} against {size} replica(s) -> {run_dir}")
            replay_log(
                ReplayRequest(
                    log=request.log,
                    target_files=[],
                    targets=[fleet_target(target, size)],
                    run_dir=run_dir,
                    duration=request.duration,
                    workers=request.workers,
                    worker_cpus=request.worker_cpus,
                    max_prompt_tokens=bounds["max_prompt_tokens"],
                    max_completion_tokens=bounds["max_completion_tokens"],
                    volume=volume_hook(request.volume, say) if request.volume is not None else None,
                )
            )
            shared = _shared_cpus(run_dir)
            if shared:
                say(f"verify: WARNING {shared}")
            run = load_run(run_dir, columns=ANALYSIS_COLUMNS)
            summary = summarize(run, slos=slos, warmup_s=0.0)
            stats = summary.targets[entry["target"]].all
            scheduled = run.final_scan.select("scheduled_s").drop_nulls().collect().get_column("scheduled_s").to_numpy()
            predicted = FleetSimulator(service, scheduled, slos).predict(size)
            measured = {metric: stats.latency_ms[metric].p95 for metric in CHECKED}
            expected = {metric: predicted.percentiles_ms[metric]["p95"] for metric in CHECKED}
            checks.append(
                {
                    "target": entry["target"],
                    "replicas": size,
                    "planned": size == entry["replicas"],
                    "run_dir": str(run_dir),
                    "requests": stats.requests,
                    "error_rate": stats.error_rate,
                    "slos_met": stats.slos_met,
                    "measured_p95_ms": measured,
                    "predicted_p95_ms": expected,
                    "predicted_slos_met": predicted.meets,
                    "error": {metric: _relative_error(expected[metric], measured[metric]) for metric in CHECKED},
                    "warning": shared,
                }
            )
    plan["verify"] = checks
    return checks


def _relative_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured, None where either is missing or the measure is 0."""
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def _shared_cpus(run_dir: Path) -> str | None:
    """What the replay measured besides the fleet, where its started servers shared CPUs (several replicas
    on a host without GPUs): they slow each other, as replicas on their own machines do not."""
    manifest = RunDir(run_dir).read_manifest_json() or {}
    servers = manifest.get("servers") or []
    shared = [s for s in servers if s.get("cpus_shared")]
    if len(servers) < 2 or not shared:
        return None
    return (
        f"the {len(servers)} replicas started here share CPUs {shared[0].get('cpus')}: each slows the others, as "
        "replicas on machines of their own would not; this replay measures that contention, not the fleet"
    )
