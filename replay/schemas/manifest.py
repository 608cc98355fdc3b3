"""RUN_DIR/manifest.json, typed: what was run, where, with which versions, and what came of it.

One model for every verb that writes a run directory (`replay`, each `sweep` point, `locust`); a
field a verb has no use for stays null. Configuration enters through TargetConfig.public_dict(),
which carries the *names* of key variables and key files, never a key, and the whole manifest
passes through the run's `Scrubber` (replay/secrets.py) before it is written, so a key echoed into a
server's log tail or an error text cannot reach the file either. Readers accept fields they do not
know (a newer shadowreplay's) and ignore them.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shadowreplay import __version__

MANIFEST_SCHEMA_VERSION = 1
PACKAGES = ("ray", "aiohttp", "pyarrow", "polars", "pydantic", "tokenizers", "transformers")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"shadowreplay": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Selection(_Part):
    """Which rows of the traffic log were replayed, how they were scheduled and clamped."""

    window: str | None = None
    limit: int | None = None
    duration: str | None = None
    schedule: str | None = None
    # --volume: how many requests arrived on the log's timeline (loadgen/volume.py VolumeScaling: spec,
    # factor, method "thinned" / "superposed" / "as logged", copies, copy_spread_s, requests, ...)
    volume: dict[str, Any] | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    output_lengths: str | None = None  # "recorded" (exact recorded output lengths) or "natural"
    block_size: int | None = None


class Counts(_Part):
    """Counts of the run, from the plan and from the rows the run wrote."""

    requests: int | None = None
    targets: int | None = None
    scheduled: int | None = None
    rows_by_status: dict[str, int] = Field(default_factory=dict)
    # Length flags, counted from the final result rows after the run (the rows' own `clamped` and
    # `raised`): requests with such a row for any target.
    clamped_requests: int | None = None  # a bound (--max-*-tokens) cut a length
    raised_requests: int | None = None  # a length raised above the recorded one (chat-template floor)
    prompts_over_max: int | None = None  # recorded text longer than --max-prompt-tokens, sent whole
    rows_written_by_runner_for_lost_workers: int | None = None


class Segment(_Part):
    """One start of a run: segment 0 is the first, segment k its k-th `--resume`. Each segment has
    its own epoch: its rows' `*_s` are seconds from it, on the log's timeline (the epoch is set so
    that the first request the segment replays is sent at its original `scheduled_s`), and its own
    workers' clock offsets, so latencies and lateness are true within every segment."""

    segment: int
    started_at: float | None = None  # wall clock
    ended_at: float | None = None
    epoch: float | None = None  # wall clock of t = 0 on this segment's timeline
    pairs: int | None = None  # (request, target) pairs it set out to replay
    from_s: float | None = None  # the first of them's scheduled_s: where the segment took up the timeline
    status: Literal["completed", "failed", "interrupted", "running"] | None = None
    command: list[str] = Field(default_factory=list)  # the command line that started it
    workers: list[dict[str, Any]] = Field(default_factory=list)
    clock_offsets: dict[str, float] = Field(default_factory=dict)
    lost_workers: list[dict[str, Any]] = Field(default_factory=list)  # worker, lost_at_s, worker_lost, reassigned, ...
    retired_rows: int | None = None  # earlier final rows (cancelled, worker_lost) this resume replays again
    torn_shards: list[str] = Field(default_factory=list)  # set aside into results/torn/, their requests replayed


class ResumeFacts(_Part):
    """What `--resume` needs to run a run's missing pairs again without its command line: the
    targets as configured (before local servers got their URLs; names of key variables, never a
    key) and the run settings."""

    targets: list[dict[str, Any]] = Field(default_factory=list)
    workers: int | None = None
    address: str | None = None
    keep_output_text: bool = False
    block_size: int = 512
    busy_poll: bool = False
    worker_cpus: list[int] | None = None
    shadow: dict[str, Any] | None = None  # a shadow's own request (log, target files, selection): `shadow --resume`
    sweep: dict[str, Any] | None = None  # a sweep's log, its row count and settings: `sweep --resume`


class SweepPoint(_Part):
    """A sweep point's place in its sweep."""

    index: int
    phase: str  # ramp, bisect or repeat
    shape: dict[str, Any]
    repeat_of: int | None = None  # phase repeat: the point measured again


class Manifest(BaseModel):
    """manifest.json (schema_version 1). `command`, `versions` and `platform` describe the process
    that writes it and are filled in when the model is made. A writer's unknown field is an error
    (a typo never reaches the file); `from_json_dict` reads a file and ignores fields it does not know."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    command: list[str] = Field(default_factory=lambda: list(sys.argv))
    versions: dict[str, str | None] = Field(default_factory=package_versions)
    platform: str = Field(default_factory=platform.platform)
    run_id: str | None = None
    # how the run ended; "running" from its start until then (a driver that was killed leaves it)
    status: Literal["completed", "failed", "interrupted", "running"] | None = None
    error: str | None = None  # why it failed, secrets removed
    started_at: float | None = None  # wall clock (s since 1970) when the run began
    ended_at: float | None = None
    epoch: float | None = None  # the wall-clock time of the run's t = 0 (results' *_s columns)
    wall_s: float | None = None
    traffic_log: str | None = None
    selection: Selection | None = None
    targets: list[dict[str, Any]] = Field(default_factory=list)  # TargetConfig.public_dict() each
    servers: list[dict[str, Any]] = Field(default_factory=list)  # local servers' identities
    cluster: dict[str, Any] | None = None
    workers: list[dict[str, Any]] = Field(default_factory=list)  # each: host, pid, nice, cpus (ProcessPriority)
    placement: dict[str, Any] | None = None  # CpuPlacement: the workers' and a local server's CPUs, and why
    driver: dict[str, Any] | None = None  # the process that ran the verb and its samplers: nice, cpus
    busy_poll: bool | None = None
    clock_offsets: dict[str, float] = Field(default_factory=dict)
    counts: Counts = Field(default_factory=Counts)
    telemetry: list[dict[str, Any]] | None = None  # each sampler's stats
    cancelled: bool | None = None
    segments: list[Segment] = Field(default_factory=list)  # every start of the run, the first included
    resume: ResumeFacts | None = None  # what `--resume` reads (replay, shadow)
    sweep_point: SweepPoint | None = None
    load_generator: dict[str, Any] | None = None  # locust: tool, users, spawn rate, processes, ...
    request_mix: dict[str, Any] | None = None  # locust: where its requests come from
    locust_stats: dict[str, Any] | None = None  # locust's own totals when it quit

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Manifest:
        """A manifest read from a file: top-level fields this version does not know are dropped."""
        return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})

    @property
    def target_configs(self) -> dict[str, dict[str, Any]]:
        """The targets' public configs (name, kind, model, base_url, ...), by name."""
        return {entry["name"]: entry for entry in self.targets if "name" in entry}
