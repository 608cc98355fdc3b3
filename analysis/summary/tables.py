"""The summary's tables as formatted cells, for both the terminal (rich) and report.html.

Each function reads a run's `RunSummary` (analysis/summary/models.py) and returns a `SummaryTable` (or None
when it would be empty): a title, column names, rows of text cells, the rows where a new group
(target) starts, and a note saying how the figures were counted. No figure is computed here;
cells only format what the summary holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shadowreplay.analysis.metrics import table as metrics
from shadowreplay.analysis.summary.models import RunSummary, SliceStats, TargetSummary

METRIC_LABELS = {
    "ttft": "TTFT",
    "itl": "ITL",
    "tpot": "TPOT",
    "e2e": "e2e",
    "sched_ttft": "TTFT from schedule",
    "sched_e2e": "e2e from schedule",
    "lateness": "send lateness",
}
SHOWN_PERCENTILES = (50.0, 90.0, 99.0)
NO_VALUE = "–"
GIB = 1024**3


@dataclass(frozen=True)
class SummaryTable:
    """Formatted cells; `numeric` columns are right-aligned; `group_starts` are row indices opening a group."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    numeric: frozenset[str] = frozenset()
    group_starts: frozenset[int] = field(default_factory=frozenset)
    note: str | None = None


def number(value: float | None, digits: int = 1) -> str:
    """`1,234.5`, or NO_VALUE for None."""
    return NO_VALUE if value is None else f"{value:,.{digits}f}"


def money(value: float | None) -> str:
    """USD: `$12,345` from 100 up, `$12.35` from 1, three significant digits below (`$0.00423`)."""
    if value is None:
        return NO_VALUE
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.3g}"


def tag_label(tag: str | None) -> str:
    return "(untagged)" if tag is None else tag


def slices(entry: TargetSummary) -> list[tuple[str, SliceStats]]:
    """(label, STATS) for a target: the whole target, then each tag (none when one tag is the whole)."""
    tags = entry.tags if len(entry.tags) > 1 else []
    return [("all", entry.all), *((tag_label(tagged.tag), tagged) for tagged in tags)]


def _grouped(
    summary: RunSummary, rows_of: Callable[[str, TargetSummary], list[list[str]]]
) -> tuple[list[list[str]], frozenset[int]]:
    rows: list[list[str]] = []
    starts = set()
    for target, entry in summary.targets.items():
        starts.add(len(rows))
        rows += rows_of(target, entry)
    return rows, frozenset(starts)


def overview_table(summary: RunSummary) -> SummaryTable:
    """Requests, errors, retries, rates and token mismatches per target and tag."""

    def rows_of(target: str, entry: TargetSummary) -> list[list[str]]:
        rows = []
        for label, stats in slices(entry):
            throughput, mismatch = stats.throughput, stats.token_mismatch
            rows.append(
                [
                    target,
                    label,
                    str(stats.requests),
                    str(stats.ok),
                    str(stats.errors),
                    str(stats.retries),
                    number(throughput.requests_per_s, 2),
                    number(throughput.output_tokens_per_s, 1),
                    number(throughput.goodput_rps, 2),
                    f"{mismatch.mismatched}/{mismatch.compared}",
                ]
            )
        return rows

    rows, starts = _grouped(summary, rows_of)
    columns = ["Target", "Tag", "Requests", "OK", "Errors", "Retries", "Req/s", "Tok/s", "Goodput", "Mismatch"]
    return SummaryTable(
        "Requests and throughput (steady window)",
        columns,
        rows,
        frozenset(columns[2:]),
        starts,
        "Req/s, Tok/s (output tokens/s) and Goodput (req/s meeting every SLO) count ok requests done in the window; "
        "Mismatch: client vs server token counts differing by more than 2%.",
    )


def errors_table(summary: RunSummary) -> SummaryTable | None:
    """Final attempts by error status, per target and tag; None when nothing failed."""

    def rows_of(target: str, entry: TargetSummary) -> list[list[str]]:
        return [
            [target, label, status, str(count)]
            for label, stats in slices(entry)
            for status, count in stats.errors_by_status.items()
            if count
        ]

    rows, starts = _grouped(summary, rows_of)
    if not rows:
        return None
    return SummaryTable(
        "Errors (final attempts)", ["Target", "Tag", "Status", "Requests"], rows, frozenset({"Requests"}), starts
    )


def replicas_table(summary: RunSummary) -> SummaryTable | None:
    """Each replica of a target of several: its requests, errors and latencies; None where no target has several."""

    def rows_of(target: str, entry: TargetSummary) -> list[list[str]]:
        return [
            [
                target,
                str(replica.replica),
                str(replica.requests),
                str(replica.errors),
                NO_VALUE if replica.error_rate is None else f"{replica.error_rate:.1%}",
                number(replica.ttft_p50_ms),
                number(replica.ttft_p95_ms),
                number(replica.tpot_p95_ms),
                number(replica.e2e_p95_ms),
            ]
            for replica in entry.replicas
        ]

    rows, starts = _grouped(summary, rows_of)
    if not rows:
        return None
    columns = ["Target", "Replica", "Requests", "Errors", "Error rate", "TTFT p50 ms", "TTFT p95 ms", "TPOT p95 ms",
               "e2e p95 ms"]  # fmt: skip
    return SummaryTable(
        "Replicas (final rows by the replica they went to)",
        columns,
        rows,
        frozenset(columns[2:]),
        starts,
        "A replica slower or failing more than its peers shows here; the target's figures above are over all of them.",
    )


def output_lengths_table(summary: RunSummary) -> SummaryTable | None:
    """Length flags and the output shortfall per target and tag; None when no request was clamped
    or raised and none asked for an exact output length."""

    def rows_of(target: str, entry: TargetSummary) -> list[list[str]]:
        rows = []
        for label, stats in slices(entry):
            lengths = stats.output_lengths
            share = lengths.short / lengths.exact_checked if lengths.exact_checked else None
            rows.append(
                [
                    target,
                    label,
                    str(stats.requests),
                    str(lengths.clamped),
                    str(lengths.raised),
                    str(lengths.exact_checked),
                    str(lengths.short),
                    NO_VALUE if share is None else f"{share:.1%}",
                    f"{lengths.tokens_short:,}/{lengths.expected_tokens:,}",
                ]
            )
        return rows

    if not any(
        stats.output_lengths.clamped or stats.output_lengths.raised or stats.output_lengths.exact_checked
        for entry in summary.targets.values()
        for _, stats in slices(entry)
    ):
        return None
    rows, starts = _grouped(summary, rows_of)
    columns = ["Target", "Tag", "Requests", "Clamped", "Raised", "Exact asked", "Short", "Short %", "Tokens short"]
    return SummaryTable(
        "Output lengths",
        columns,
        rows,
        frozenset(columns[2:]),
        starts,
        "Clamped: a --max-*-tokens bound cut the request's lengths; Raised: a length raised above the recorded "
        "one (a prompt below the chat template's floor); Exact asked: ok requests that asked for an exact "
        "output length and have server usage; Short (the output shortfall): of those, fewer output tokens "
        "than asked (a hosted API that cannot force a length, or the context window); Tokens short: tokens "
        "missing / tokens asked.",
    )


def latency_tables(summary: RunSummary) -> list[SummaryTable]:
    """One latency table per target: count and percentiles of every latency metric, per tag."""
    keys = [metrics.percentile_key(p) for p in SHOWN_PERCENTILES]  # LatencyStats' field names: p50, p90, p99
    tables = []
    for target, entry in summary.targets.items():
        rows: list[list[str]] = []
        starts = set()
        for label, stats in slices(entry):
            starts.add(len(rows))
            for name, values in stats.latency_ms.items():
                rows.append(
                    [
                        label,
                        METRIC_LABELS.get(name, name),
                        str(values.count),
                        *(number(getattr(values, key)) for key in keys),
                    ]
                )
        tables.append(
            SummaryTable(
                f"Latency (ms): {target}",
                ["Tag", "Metric", "N", *keys],
                rows,
                frozenset(["N", *keys]),
                frozenset(starts),
            )
        )
    return tables


def slo_table(summary: RunSummary) -> SummaryTable | None:
    """SLO verdicts per target and tag; None without SLOs."""
    if not summary.slos:
        return None

    def rows_of(target: str, entry: TargetSummary) -> list[list[str]]:
        return [
            [
                target,
                label,
                result.slo,
                number(result.value_ms),
                {True: "yes", False: "no", None: NO_VALUE}[result.met],
                f"{result.requests_meeting}/{result.requests_checked}",
            ]
            for label, stats in slices(entry)
            for result in stats.slo
        ]

    rows, starts = _grouped(summary, rows_of)
    return SummaryTable(
        "SLOs (percentile level; requests meeting each on their own value)",
        ["Target", "Tag", "SLO", "Value ms", "Met", "Requests meeting"],
        rows,
        frozenset({"Value ms", "Requests meeting"}),
        starts,
    )


def _monthly_cell(monthly: dict[str, Any] | None) -> str:
    """`$9,400`, with `x3` for the deployments a self-hosted month needs; NO_VALUE without a projection."""
    if monthly is None or monthly["cost_usd"] is None:
        return NO_VALUE
    deployments = monthly.get("deployments")
    return money(monthly["cost_usd"]) + (f" x{deployments}" if deployments is not None else "")


def cost_table(summary: RunSummary) -> SummaryTable | None:
    """Run cost, cost per million tokens and the monthly projection per target; None without a price file."""
    cost = summary.cost
    if cost.get("status") != "computed":
        return None
    rows = []
    remarks = []
    for target, entry in cost["targets"].items():
        billed = entry["billed"]
        rows.append(
            [
                target,
                (entry["price"] or "no price") + ("*" if entry["example"] else ""),
                f"{billed['requests']:,}",
                f"{billed['input_tokens']:,}",
                f"{billed['output_tokens']:,}",
                money(entry["run_cost_usd"]),
                money(entry["cost_per_mtok_output_usd"]),
                money(entry["cost_per_mtok_total_usd"]),
                _monthly_cell(entry["monthly"]),
            ]
        )
        if entry["no_price_reason"]:
            remarks.append(f"no price for {target}: {entry['no_price_reason']}")
        elif entry["monthly"] and entry["monthly"]["reason"]:
            remarks.append(f"no monthly figure for {target}: {entry['monthly']['reason']}")
    columns = ["Target", "Price entry", "Requests", "In tok", "Out tok", "Run cost", "$/1M out", "$/1M tok", "Monthly"]
    billing = "failed requests billed" if cost["billing"]["failed_requests"] else "failed requests not billed"
    note = (
        f"Prices from {cost['prices_file']} ({cost['currency']}); requests and tokens billed ({billing}); "
        "$/1M out = run cost / output tokens (input cost included), $/1M tok = run cost / (input + output tokens); "
        f"monthly: {cost['monthly_volume']['description']}; xN: self-hosted deployments needed."
    )
    if remarks:
        text = "; ".join(remarks)
        note += f" {text[0].upper()}{text[1:]}."
    if cost["example_prices"]:
        note = "EXAMPLE PRICES (*), not a contract: replace them in the price file. " + note
    return SummaryTable("Cost", columns, rows, frozenset(columns[2:9]), frozenset(), note)


def gpu_table(summary: RunSummary) -> SummaryTable | None:
    """GPU utilisation, memory, power and energy per device and in total; None without NVML telemetry."""
    gpu = summary.gpu
    if gpu.get("status") != "measured":
        return None
    rows = []
    for device in gpu["devices"]:
        rows.append(
            [
                f"{device['host']}:{device['device']}"
                + (f" {device['gpu_uuid']}" if device.get("gpu_uuid") else "")
                + (" LOST" if device.get("lost_at_s") is not None else "")
                + ("" if device.get("serving", True) else " (not serving)"),
                str(device["samples"]),
                number(device["gpu_util_pct"]["mean"]),
                number(device["gpu_util_pct"]["p95"]),
                number(_gib(device["mem_used_high_water_bytes"]), 2),
                number(device["power_w"]["mean"]),
                number(device["energy_j"], 0),
                device["energy_method"] or NO_VALUE,
                "",
            ]
        )
    energy = gpu["energy"]
    rows.append(
        [
            f"serving ({gpu['devices_count']} of {gpu['all_sampled']['devices_count']} GPUs)"
            if gpu["devices_count"] != gpu["all_sampled"]["devices_count"]
            else f"all ({gpu['devices_count']} GPU{'s' if gpu['devices_count'] != 1 else ''})",
            "",
            number(gpu["gpu_util_pct"]["mean"]),
            number(gpu["gpu_util_pct"]["p95"]),
            number(_gib(gpu["mem_used_high_water_bytes"]), 2),
            number(gpu["power_w"]["mean_total"]),
            number(energy["joules"], 0),
            energy["method"] or NO_VALUE,
            number(energy["joules_per_output_token"], 4),
        ]
    )
    every = gpu["all_sampled"]
    if every["devices_count"] != gpu["devices_count"]:  # NVML sees every GPU of a host: the others apart
        rows.append(
            [
                f"all sampled ({every['devices_count']} GPUs)",
                "",
                number(every["gpu_util_pct"]["mean"]),
                number(every["gpu_util_pct"]["p95"]),
                "",
                number(every["power_w_mean_total"]),
                number(every["energy_joules"], 0),
                "",
                "",
            ]
        )
    columns = [
        "GPU",
        "Samples",
        "Util mean %",
        "Util p95 %",
        "Mem peak GiB",
        "Power mean W",
        "Energy J",
        "Method",
        "J/output token",
    ]
    per_token = (
        f"J/output token withheld: {energy['withheld']}"
        if energy.get("withheld")
        else f"J/output token over the {energy['output_tokens']:,} output tokens of "
        f"{', '.join(energy['targets'])} completed in the window"
    )
    lost = f"; lost: {', '.join(gpu['lost_devices'])}" if gpu.get("lost_devices") else ""
    lost += f"; serving GPUs: {gpu['serving']['how']}"
    note = (
        f"Steady window ({energy['window_s']:.1f} s, energy measured over {energy['covered_s']:.1f} s); "
        f"{per_token}; memory peak over the whole run; total power = sum of the GPUs' means{lost}."
    )
    return SummaryTable(
        "GPU utilisation and energy",
        columns,
        rows,
        frozenset(columns[1:7] + columns[8:]),
        frozenset({len(rows) - 1}),
        note,
    )


def _bucket_cell(bounds: list[float | None] | None) -> str:
    """`20-40` (ms) for a bucket's [lower, upper] bounds, `2,560,000-+Inf` for the top one; NO_VALUE for none."""
    if bounds is None:
        return NO_VALUE
    lower, upper = bounds
    return f"{lower:,.10g}-{'+Inf' if upper is None else f'{upper:,.10g}'}"


VERDICTS = {True: "agree", False: "DISAGREE", None: NO_VALUE}
NOT_COMPARABLE = "not comparable"


def _share_cell(reads: dict | None) -> str:
    """`66%` of ITL gaps that are 0 ms (tokens read together); "" for TTFT."""
    if not reads or reads.get("share") is None:
        return ""
    return f"{reads['share']:.0%}"


def server_histogram_table(summary: RunSummary) -> SummaryTable | None:
    """vLLM's own TTFT/ITL histograms against our client-side values, per target, metric and quantile;
    None without scraped histograms. The note starts with a DISAGREE (or COUNTS DIFFER, or NOT COMPARABLE)
    line when one applies."""
    block = summary.server_histograms
    if block.get("status") != "compared":
        return None
    rows: list[list[str]] = []
    starts = set()
    for target, entry in block["targets"].items():
        starts.add(len(rows))
        for metric, result in entry["metrics"].items():
            label = METRIC_LABELS.get(metric, metric)
            if result["status"] != "compared":
                rows.append([target, label, NO_VALUE, NO_VALUE, "", NO_VALUE, result["status"], *[""] * 5])
                continue
            counts = result["counts"]
            comparable = result.get("comparable", True)
            for index, row in enumerate(result["quantiles"]):
                first = index == 0
                rows.append(
                    [
                        target,
                        label,
                        f"{counts['vllm']:,}" if first else "",
                        f"{counts['ours']:,}" if first else "",
                        _share_cell(result.get("multi_token_reads")) if first else "",
                        row["quantile"],
                        _bucket_cell(row["vllm_bucket_ms"]),
                        number(row["vllm_estimate_ms"]),
                        number(row["ours_ms"]),
                        number(row.get("beyond_bucket_ms")),
                        row["higher"] or NO_VALUE,
                        VERDICTS[row["agree"]] if comparable else NOT_COMPARABLE,
                    ]
                )
    columns = [
        "Target",
        "Metric",
        "vLLM N",
        "Our N",
        "0 ms gaps",
        "Quantile",
        "vLLM bucket ms",
        "vLLM est ms",
        "Ours ms",
        "Beyond ms",
        "Higher",
        "Verdict",
    ]
    flags = []
    if block["disagreements"]:
        flags.append("DISAGREE: " + "; ".join(block["disagreements"]) + ".")
    if block["count_differences"]:
        flags.append("COUNTS DIFFER: " + "; ".join(block["count_differences"]) + ".")
    if block.get("not_comparable"):
        flags.append("NOT COMPARABLE: " + "; ".join(block["not_comparable"]) + ".")
    note = (
        "vLLM's histograms (server side: request arrival to first token; gaps between output steps) over the run "
        "(last scrape - the scrape before the first send) against ours (client side, final ok requests observed "
        "between those scrapes, so normally a little higher); vLLM est: interpolated inside its bucket; "
        "beyond: how far ours lies outside vLLM's bucket (+ above, - below, 0 inside); agree: "
        + (block.get("definitions") or {}).get("server_histogram_agree", "")
        + "; 0 ms gaps: "
        + (block.get("definitions") or {}).get("server_histogram_itl_reads", "")
        + "."
    )
    return SummaryTable(
        "Server histograms (vLLM /metrics) vs ours",
        columns,
        rows,
        frozenset({"vLLM N", "Our N", "0 ms gaps", "vLLM est ms", "Ours ms", "Beyond ms"}),
        frozenset(starts),
        " ".join([*flags, note]),
    )


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def summary_tables(summary: RunSummary) -> list[SummaryTable]:
    """Every table of the summary, in reading order, leaving out the empty ones."""
    tables = [
        overview_table(summary),
        errors_table(summary),
        output_lengths_table(summary),
        *latency_tables(summary),
        replicas_table(summary),
        slo_table(summary),
        cost_table(summary),
        gpu_table(summary),
        server_histogram_table(summary),
    ]
    return [table for table in tables if table is not None]
