"""The typed results of analysis: `summary.json` of a run, one point of a sweep's curve, and the
sweep's `summary.json`. Built by analysis/summary/run_summary.py and loadgen/sweep.py, dumped with
the model, read by attribute (`summary.targets[name].all.latency_ms["ttft"].p95`).

The JSON shape is the one run_summary.py's docstring documents (summary `schema_version` 1): these
models name every key of it. The cost, gpu and server_histograms blocks are kept as JSON objects
here (their own modules, analysis/cost/model.py and analysis/telemetry/, document their keys).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.replay.schemas.run_completeness import RunCompleteness

# The percentile fields below are the reported ones; a change there must change these models too.
assert metrics.REPORTED_PERCENTILES == (50.0, 90.0, 95.0, 99.0), "LatencyStats names p50, p90, p95, p99"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyStats(_Model):
    """One latency metric over a slice's population (analysis/metrics/table.py METRICS), in ms."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None


class OutputTokens(_Model):
    total: int | None
    from_server: int
    from_client: int


class TokenMismatch(_Model):
    compared: int
    mismatched: int | None


class WindowCounts(_Model):
    completed: int
    output_tokens: int | None
    good: int


class Throughput(_Model):
    requests_per_s: float | None
    output_tokens_per_s: float | None
    goodput_rps: float | None


class SloResult(_Model):
    slo: str
    metric: str
    percentile: float
    threshold_ms: float
    value_ms: float | None
    met: bool | None
    over_ms: float | None = None  # value_ms - threshold_ms (absent from summaries written before it)
    requests_meeting: int
    requests_checked: int


class OutputLengths(_Model):
    """Final rows' length flags (`clamped`, `raised`) and the output shortfall: final ok rows that
    asked for an exact output length (`expected_completion_tokens`) and whose server usage reports
    fewer tokens (a hosted API cannot force a length; a context window can end an answer)."""

    clamped: int = 0
    raised: int = 0
    exact_checked: int = 0  # final ok rows with an exact length asked and server completion_tokens
    short: int = 0  # of those, completion_tokens < expected_completion_tokens
    expected_tokens: int = 0  # expected_completion_tokens summed over exact_checked
    tokens_short: int = 0  # expected - completion_tokens summed over the short rows


class MultiTokenReads(_Model):
    """ITL gaps of exactly 0 ms (analysis/metrics/table.py `read_together`): tokens read in one socket read or
    one multi-token chunk. `share` = zero_gaps / gaps (null with no gaps)."""

    zero_gaps: int = 0
    gaps: int = 0
    share: float | None = None


class SliceStats(_Model):
    """STATS of one slice: a target, or a target and tag."""

    requests: int
    ok: int
    errors: int
    error_rate: float | None
    errors_by_status: dict[str, int]
    http_statuses: dict[str, int]
    attempts: int
    retries: int
    latency_ms: dict[str, LatencyStats]
    multi_token_reads: MultiTokenReads = Field(default_factory=MultiTokenReads)  # absent from older summaries
    output_tokens: OutputTokens
    token_mismatch: TokenMismatch
    window: WindowCounts
    throughput: Throughput
    slo: list[SloResult]
    slos_met: bool | None
    output_lengths: OutputLengths = Field(default_factory=OutputLengths)


class TagStats(SliceStats):
    tag: str | None

    @model_serializer(mode="wrap")
    def _tag_first(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`tag` leads its slice in summary.json, as it always has."""
        data = handler(self)
        return {"tag": data.pop("tag"), **data}


class ReplicaStats(_Model):
    """One replica of a target of several (final rows sent to it, results `replica`): counts and the
    latencies that tell a slow or failing replica apart (percentiles of its ok rows, ms)."""

    replica: int
    requests: int
    ok: int
    errors: int
    error_rate: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tpot_p95_ms: float | None
    e2e_p95_ms: float | None


class TargetSummary(_Model):
    all: SliceStats
    tags: list[TagStats]  # empty when no row has a tag
    replicas: list[ReplicaStats] = Field(default_factory=list)  # empty for a target of one replica


class SummarySource(_Model):
    results_files: int
    rows: int
    final_rows: int
    requests_without_final_row: int
    manifest: str | None


class SummaryWindow(_Model):
    kind: Literal["steady", "whole_run"]
    start_s: float
    end_s: float
    duration_s: float
    warmup_s: float
    schedule_start_s: float
    schedule_end_s: float


class LoadWarning(_Model):
    """The load was not offered as recorded (analysis/summary/load_fidelity.py): which check, for
    which target, on which figure, its value against its limit, and what to do."""

    check: str
    target: str
    figure: str
    value: float
    limit: float
    message: str


class TtftTimeline(_Model):
    """TTFT percentiles by send time per target (run_summary.SendTimeBins), for the report page; not in
    summary.json. targets: {target: {"bin": [bin index, ...], "p50": [...], ...}}, bins `bin_s` wide."""

    bin_s: float
    targets: dict[str, dict[str, list[float]]]


class RunSummary(_Model):
    """RUN_DIR/summary.json."""

    kind: Literal["shadowreplay.summary"] = "shadowreplay.summary"
    schema_version: int = 1
    shadowreplay_version: str | None
    run_dir: str
    run_id: str | None
    source: SummarySource
    definitions: dict[str, str]
    window: SummaryWindow
    slos: list[str]
    targets: dict[str, TargetSummary]
    cost: dict[str, Any]
    gpu: dict[str, Any]
    server_histograms: dict[str, Any]
    load_warnings: list[LoadWarning] = Field(default_factory=list)
    completeness: RunCompleteness | None = None
    """Whether the run is whole (replay/schemas/run_completeness.py), with the lines `report` prints first;
    null where nobody checked (a sweep point's summary)."""
    distributions: dict[str, dict[str, list[float]]] = Field(default_factory=dict, exclude=True)
    """Percentile curves per target and metric (run_summary.Curves), for the report page; not in summary.json."""
    timeline: TtftTimeline | None = Field(default=None, exclude=True)
    """TTFT by send time per target (run_summary.SendTimeBins), for the report page; not in summary.json."""

    def json_dict(self) -> dict[str, Any]:
        """The summary as the JSON object summary.json holds."""
        return self.model_dump(mode="json")

    def incomplete_lines(self) -> list[str]:
        """What a reader is told before any figure: the completeness's lines (empty for a whole run, or
        where completeness was not checked)."""
        return self.completeness.lines() if self.completeness is not None else []


class CurvePoint(_Model):
    """One load point of a sweep: a row of SWEEP_DIR/curve.parquet (loadgen/sweep.py CURVE_SCHEMA)."""

    point: int
    phase: Literal["ramp", "bisect", "repeat"]  # "repeat": a point measured again (`repeat_of`)
    shape: Literal["poisson", "trace", "concurrency"]
    offered_rps: float | None
    concurrency: int | None
    requests: int
    achieved_rps: float | None
    output_tokens_per_s: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    tpot_p95_ms: float | None
    e2e_p95_ms: float | None
    error_rate: float | None
    gpu_util_mean_pct: float | None
    joules_per_output_token: float | None
    slo_met: bool | None
    run_dir: str  # the point's run directory, relative to the sweep directory
    # Curve version 2 (loadgen/sweep.py CURVE_VERSION): the saturation criteria and the repeats.
    sent_rps: float | None = None  # Poisson: requests scheduled in the steady window / its length
    kept_rps: float | None = None  # Poisson: ok requests done in that window shifted by the median e2e / its length
    saturation: str | None = None  # the saturation criteria that fired at this point, comma-separated
    repeat_of: int | None = None  # the point this one measures again
    outlier: bool = False  # contradicted by its repeat: shown, not used for saturation or SLO capacity


class SaturationFinding(_Model):
    """One saturation criterion that fired at a point (loadgen/sweep.py CRITERIA)."""

    criterion: Literal["errors", "follow", "latency", "throughput"]
    value: float  # the point's figure (error rate, kept/sent, TTFT p95 / baseline, output tokens/s gain)
    limit: float  # the criterion's limit
    text: str


class Saturation(_Model):
    point: int
    level: float
    reason: str
    criteria: list[SaturationFinding] = Field(default_factory=list)  # empty in sweeps before curve version 2
    confirmed_by: int | None = None  # the repeat that saturated too


class SweepRepeat(_Model):
    """A point measured again because the curve contradicted it, and what the repeat said."""

    point: int
    repeat: int
    level: float
    why: Literal["saturated", "missed"]  # saturated: before the ramp stopped; missed: below a point meeting the SLOs
    verdict: Literal["confirmed", "outlier"]  # outlier: the repeat did not reproduce the first measurement
    text: str


class SweepSummary(BaseModel):
    """SWEEP_DIR/summary.json. The capacity key is `slo_capacity_rps` for Poisson sweeps and
    `slo_capacity_users` for closed-loop ones (both kept as extra keys of the model)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["shadowreplay.sweep"] = "shadowreplay.sweep"
    schema_version: int = 2  # 2: saturation criteria, repeats
    target: str
    shape: Literal["poisson", "trace", "concurrency"]
    levels: list[float]
    duration_s: float
    slos: str | None
    saturation: Saturation | None
    points: int
    curve: str
    servers: list[dict[str, Any]] | None = Field(default=None)
    repeats: list[SweepRepeat] = Field(default_factory=list)  # (schema_version 2)
    criteria: dict[str, float] = Field(default_factory=dict)  # the saturation criteria's limits (schema_version 2)
    reused_points: list[int] = Field(default_factory=list)  # `sweep --resume`: points read back, not measured again
    discarded_points: list[str] = Field(default_factory=list)  # unfinished points set aside (SWEEP_DIR/discarded/)

    @property
    def slo_capacity(self) -> float | None:
        """The SLO capacity, in the sweep's unit (requests/s or users)."""
        extra = self.model_extra or {}
        value = extra.get("slo_capacity_rps", extra.get("slo_capacity_users"))
        return float(value) if value is not None else None

    def json_dict(self) -> dict[str, Any]:
        """The summary as the JSON object summary.json holds (`servers` only when there are any)."""
        data = self.model_dump(mode="json")
        if data.get("servers") is None:
            data.pop("servers", None)
        return data
