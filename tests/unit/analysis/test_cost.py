"""Price files (validation, matching) and the cost model, with every figure recomputed here by hand."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shadowreplay.analysis.cost.model import CostError, MonthlyVolume
from shadowreplay.analysis.cost.prices import PriceError, SelfHostedPrice, TokenPrice, load_prices
from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.analysis.summary.run_summary import summarize
from shadowreplay.cli import main
from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from tests.support.paths import CONFIGS
from tests.support.results_factory import result_row, write_results

SHIPPED_PRICES = CONFIGS / "prices.yaml"
MONTH_S = 30 * 24 * 3600

PRICE_BOOK = {
    "schema_version": 1,
    "currency": "USD",
    "targets": {"local": "self_hosted/box"},
    "providers": {
        "acme": {
            "base_url_hosts": ["api.acme.test"],
            "models": {
                "m1": {
                    "aliases": ["m1-2025"],
                    "input_per_mtok": 2.0,
                    "cached_input_per_mtok": 0.5,
                    "output_per_mtok": 8.0,
                    "as_of": "2025-01-01",
                    "example": False,
                },
                "m2": {"input_per_mtok": 1.0, "output_per_mtok": 1.0, "as_of": "2025-01-01", "example": True},
            },
        }
    },
    "self_hosted": {
        "box": {
            "gpu": "H100",
            "gpu_hour_usd": 3.0,
            "gpu_count": 2,
            "engineering_usd_per_month": 7200,
            "as_of": "2025-01-01",
            "example": True,
        },
    },
}
HOSTED_IN, HOSTED_OUT = 2.0, 8.0
BOX_USD_PER_HOUR = 3.0 * 2 + 7200 / 720
MANIFEST = {
    "run_id": "run-factory",
    "targets": [
        {"name": "hosted", "kind": "openai", "model": "m1-2025", "base_url": "https://API.acme.test/v1"},
        {"name": "local", "kind": "vllm", "model": "tiny", "base_url": "http://127.0.0.1:8000/v1"},
        {"name": "mystery", "kind": "openai", "model": "m9", "base_url": "https://api.acme.test/v1"},
    ],
}


def write_book(path: Path, book: dict) -> Path:
    path.write_text(yaml.safe_dump(book), encoding="utf-8")
    return path


def _row(request: str, target: str, i: int, **kwargs) -> dict:
    row = result_row(request, target=target, scheduled_s=float(i), gaps_ms=[5.0] * (i % 4 + 1), **kwargs)
    row["expected_prompt_tokens"] = 100 + i
    row["prompt_tokens"] = 100 + i if row["status"] == "ok" else None  # a failed request has no usage
    return row


@pytest.fixture
def run_rows() -> list[dict]:
    rows = []
    for i in range(10):
        failed = i == 3
        rows.append(
            _row(
                f"r{i}",
                "hosted",
                i,
                status="timeout" if failed else "ok",
                **({"ttft_ms": None, "client_tokens": 0, "completion_tokens": None} if failed else {}),
            )
        )
        rows.append(_row(f"r{i}", "local", i))
        rows.append(_row(f"r{i}", "mystery", i))
    rows[3 * 5]["prompt_tokens"] = None  # hosted r5: no server usage; the length sent (105) is billed
    rows.append(_row("r2", "hosted", 2, attempt=0, final=False, status="http_error", http_status=429, ttft_ms=None))
    return rows


@pytest.fixture
def run_dir(tmp_path, run_rows) -> Path:
    directory = tmp_path / "run"
    write_results(directory, run_rows, shards=2, manifest=MANIFEST)
    return directory


def _billed(rows: list[dict], target: str, bill_failed: bool = False) -> tuple[int, int, int]:
    """(requests, input tokens, output tokens) as the cost model's definition says, from the row dicts."""
    chosen = [r for r in rows if r["target"] == target and r["final"] and (bill_failed or r["status"] == "ok")]
    inputs = sum(r["prompt_tokens"] if r["prompt_tokens"] is not None else r["expected_prompt_tokens"] for r in chosen)
    outputs = sum(r["completion_tokens"] if r["completion_tokens"] is not None else r["client_tokens"] for r in chosen)
    return len(chosen), inputs, outputs


# ---- price files -----------------------------------------------------------------------------


def test_the_shipped_price_file_is_valid_dated_and_marked_as_examples():
    book = load_prices(SHIPPED_PRICES)
    assert {"openai", "anthropic", "google", "groq", "together"} <= set(book.providers)
    entries = [m for p in book.providers.values() for m in p.models.values()] + list(book.self_hosted.values())
    assert entries and all(e.example and e.as_of <= dt.date.today() for e in entries)
    assert all("replace" in (e.note or "") or "example" in (e.note or "") for e in entries)
    assert book.billing.failed_requests is False
    assert all(e.gpu.startswith("H100") for e in book.self_hosted.values())


def _mutated(change) -> dict:
    book = copy.deepcopy(PRICE_BOOK)
    change(book)
    return book


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            lambda b: b["providers"]["acme"]["models"]["m1"].pop("output_per_mtok"),
            ["providers.acme.models.m1.output_per_mtok", "Field required"],
        ),
        (
            lambda b: b["providers"]["acme"]["models"]["m1"].update(input_per_mtok=-1),
            ["providers.acme.models.m1.input_per_mtok", "greater than or equal to 0"],
        ),
        (lambda b: b["providers"]["acme"]["models"]["m2"].pop("as_of"), ["providers.acme.models.m2.as_of"]),
        (lambda b: b["self_hosted"]["box"].pop("example"), ["self_hosted.box.example"]),
        (lambda b: b["self_hosted"]["box"].update(gpu_count=0), ["self_hosted.box.gpu_count"]),
        (
            lambda b: b["providers"]["acme"]["models"]["m1"].update(outptu_per_mtok=1),
            ["providers.acme.models.m1.outptu_per_mtok", "Extra inputs"],
        ),
        (lambda b: b.update(currency="EUR"), ["currency"]),
        (lambda b: b["targets"].update(ghost="acme/nope"), ["targets.ghost", "no price entry 'acme/nope'"]),
        (lambda b: b["providers"].update(self_hosted=b["providers"]["acme"]), ["providers", "reserved"]),
        (lambda b: b["providers"]["acme"]["models"]["m2"].update(aliases=["m1-2025"]), ["m1-2025", "used by both"]),
    ],
)
def test_price_file_errors_name_the_file_and_the_field(tmp_path, change, fragments):
    path = write_book(tmp_path / "prices.yaml", _mutated(change))
    with pytest.raises(PriceError) as info:
        load_prices(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid price file")
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("schema_version: [1\n", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping"), (None, "cannot read")],
)
def test_unreadable_price_files(tmp_path, content, fragment):
    path = tmp_path / "prices.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PriceError, match=fragment) as info:
        load_prices(path)
    assert str(path) in str(info.value)


def test_matching_rules_in_order(tmp_path):
    book = load_prices(write_book(tmp_path / "p.yaml", PRICE_BOOK))
    own = book.match("hosted", {"price": "acme/m2", "base_url": "https://api.acme.test", "model": "m1"})
    assert (own.entry_name, own.matched_by) == ("acme/m2", "target config")
    mapped = book.match("local", {"kind": "vllm", "model": "tiny"})
    assert (mapped.entry_name, mapped.matched_by) == ("self_hosted/box", "price file targets")
    assert isinstance(mapped.entry, SelfHostedPrice)
    by_host = book.match("hosted", MANIFEST["targets"][0])
    assert (by_host.entry_name, by_host.matched_by) == ("acme/m1", "base_url host and model")
    assert isinstance(by_host.entry, TokenPrice)
    by_provider = book.match("x", {"provider": "acme", "model": "m2"})
    assert (by_provider.entry_name, by_provider.matched_by) == ("acme/m2", "provider and model")
    for config, reason in [
        ({"price": "acme/zzz"}, "price entry 'acme/zzz' is not in the price file"),
        ({"base_url": "http://127.0.0.1:9/v1", "model": "m1"}, "no provider lists host '127.0.0.1'"),
        ({"base_url": "https://api.acme.test/v1", "model": "m9"}, "provider acme has no model 'm9'"),
        ({"provider": "other", "model": "m1"}, "provider 'other' is not in the price file"),
        (None, "no provider, base_url or mapping"),
    ]:
        match = book.match("t", config)
        assert not match.priced and reason in match.no_price_reason


# ---- cost arithmetic -------------------------------------------------------------------------


def test_run_cost_per_target_recomputed_by_hand(tmp_path, run_dir, run_rows):
    book = load_prices(write_book(tmp_path / "p.yaml", PRICE_BOOK))
    summary = summarize(load_run(run_dir), prices=book)
    cost = summary.cost
    assert cost["status"] == "computed" and cost["example_prices"] is True
    assert cost["billing"] == {"failed_requests": False} and cost["monthly_volume"]["basis"] == "run_span"

    hosted = cost["targets"]["hosted"]
    requests, inputs, outputs = _billed(run_rows, "hosted")
    assert requests == 9  # r3 failed and is not billed; the retried 429 attempt never is
    assert hosted["billed"] == {
        "requests": 9,
        "input_tokens": inputs,
        "cached_input_tokens": 0,
        "output_tokens": outputs,
    }
    assert hosted["input_tokens_from_sent_length"] == 1
    expected = (inputs * HOSTED_IN + outputs * HOSTED_OUT) / 1e6
    assert hosted["run_cost_usd"] == pytest.approx(expected)
    assert hosted["cost_per_mtok_output_usd"] == pytest.approx(expected / outputs * 1e6)
    assert hosted["cost_per_mtok_total_usd"] == pytest.approx(expected / (inputs + outputs) * 1e6)
    assert (hosted["price"], hosted["kind"], hosted["example"], hosted["as_of"]) == (
        "acme/m1",
        "tokens",
        False,
        "2025-01-01",
    )
    span_s = 9.0  # scheduled 0..9 s
    assert hosted["monthly"]["cost_usd"] == pytest.approx(expected * MONTH_S / span_s)
    assert hosted["monthly"]["usage"]["output_tokens"] == pytest.approx(outputs * MONTH_S / span_s)

    local = cost["targets"]["local"]
    rows = [r for r in run_rows if r["target"] == "local"]
    duration = max(r["done_s"] for r in rows) - min(r["scheduled_s"] for r in rows)
    _, local_in, local_out = _billed(run_rows, "local")
    assert local["kind"] == "self_hosted" and local["run_duration_s"] == pytest.approx(duration)
    assert local["usd_per_hour"] == pytest.approx(BOX_USD_PER_HOUR)
    assert local["run_cost_usd"] == pytest.approx(BOX_USD_PER_HOUR * duration / 3600)
    assert local["cost_per_mtok_output_usd"] == pytest.approx(BOX_USD_PER_HOUR * duration / 3600 / local_out * 1e6)
    # capacity: the steady window [0.9 s, 9 s] (10% warm-up), output tokens of requests done inside it
    in_window = [r for r in rows if 0.9 <= r["done_s"] <= 9.0]
    capacity = sum(r["completion_tokens"] for r in in_window) / 8.1
    monthly = local["monthly"]
    assert monthly["capacity_output_tokens_per_s"] == pytest.approx(capacity)
    deployments = math.ceil(local_out * MONTH_S / span_s / (capacity * MONTH_S))
    assert monthly["deployments"] == deployments
    assert monthly["cost_usd"] == pytest.approx(deployments * 6.0 * 720 + 7200)

    mystery = cost["targets"]["mystery"]
    assert mystery["price"] is None and mystery["run_cost_usd"] is None and mystery["monthly"] is None
    assert "provider acme has no model 'm9'" in mystery["no_price_reason"]


def test_failed_requests_are_billed_only_when_the_price_file_says_so(tmp_path, run_dir, run_rows):
    book = load_prices(write_book(tmp_path / "p.yaml", _mutated(lambda b: b.update(billing={"failed_requests": True}))))
    hosted = summarize(load_run(run_dir), prices=book).cost["targets"]["hosted"]
    requests, inputs, outputs = _billed(run_rows, "hosted", bill_failed=True)
    assert requests == hosted["billed"]["requests"] == 10
    assert hosted["billed"]["input_tokens"] == inputs == sum(100 + i for i in range(10))
    assert hosted["run_cost_usd"] == pytest.approx((inputs * HOSTED_IN + outputs * HOSTED_OUT) / 1e6)


def test_monthly_volumes_given_as_numbers(tmp_path, run_dir, run_rows):
    book = load_prices(write_book(tmp_path / "p.yaml", PRICE_BOOK))
    requests, inputs, outputs = _billed(run_rows, "hosted")
    run_cost = (inputs * HOSTED_IN + outputs * HOSTED_OUT) / 1e6
    by_requests = summarize(load_run(run_dir), prices=book, monthly=MonthlyVolume("requests", 1e6)).cost
    assert by_requests["targets"]["hosted"]["monthly"]["cost_usd"] == pytest.approx(run_cost / requests * 1e6)
    by_tokens = summarize(load_run(run_dir), prices=book, monthly=MonthlyVolume("tokens", 5e9)).cost
    assert by_tokens["targets"]["hosted"]["monthly"]["cost_usd"] == pytest.approx(run_cost * 5e9 / (inputs + outputs))
    box = by_tokens["targets"]["local"]["monthly"]
    assert box["cost_usd"] == pytest.approx(box["deployments"] * 6.0 * 720 + 7200)
    for bad in (0, -5, float("nan")):
        with pytest.raises(CostError, match="positive number"):
            MonthlyVolume("tokens", bad)


def test_a_capacity_in_the_price_entry_sizes_the_deployments(tmp_path, run_dir, run_rows):
    book = load_prices(
        write_book(
            tmp_path / "p.yaml", _mutated(lambda b: b["self_hosted"]["box"].update(capacity_output_tokens_per_s=1000.0))
        )
    )
    summary = summarize(load_run(run_dir), prices=book, monthly=MonthlyVolume("tokens", 1e10))
    monthly = summary.cost["targets"]["local"]["monthly"]
    _, inputs, outputs = _billed(run_rows, "local")
    expected = math.ceil(1e10 * outputs / (inputs + outputs) / (1000.0 * MONTH_S))
    assert (monthly["capacity_from"], monthly["deployments"]) == ("price entry", expected)


def test_no_price_file_says_absent(run_dir):
    assert summarize(load_run(run_dir)).cost["status"] == "absent"


# ---- through the CLI -------------------------------------------------------------------------


def _traffic_log(path: Path) -> Path:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = [
        {
            "request_id": f"q{i}",
            "arrival_time": start + dt.timedelta(seconds=5 * i),
            "api": "chat",
            "prompt_tokens": 100,
            "completion_tokens": 50,
        }
        for i in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAFFIC_LOG_SCHEMA), path)
    return path


def test_report_cost_section_json_and_tables(tmp_path, run_dir, run_rows, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # wide enough that no cell wraps
    prices = write_book(tmp_path / "p.yaml", PRICE_BOOK)
    log = _traffic_log(tmp_path / "log.parquet")
    assert main(["report", str(run_dir), "--prices", str(prices), "--monthly-from-log", str(log), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cost"] == json.loads((run_dir / "summary.json").read_text())["cost"]
    monthly_tokens = 3 * 150 / 10.0 * MONTH_S  # the log: 450 tokens over a 10 s arrival span
    assert printed["cost"]["monthly_volume"] == {
        "basis": "traffic_log",
        "per_month": pytest.approx(monthly_tokens),
        "description": printed["cost"]["monthly_volume"]["description"],
        "schedule_span_s": 9.0,
    }
    _, inputs, outputs = _billed(run_rows, "hosted")
    run_cost = (inputs * HOSTED_IN + outputs * HOSTED_OUT) / 1e6
    assert printed["cost"]["targets"]["hosted"]["monthly"]["cost_usd"] == pytest.approx(
        run_cost * monthly_tokens / (inputs + outputs)
    )

    assert main(["report", str(run_dir), "--prices", str(prices)]) == 0
    out = capsys.readouterr().out
    for text in (
        "Cost",
        "acme/m1",
        "self_hosted/box*",
        "no price",
        "EXAMPLE PRICES",
        "provider acme has no model 'm9'",
        f"${run_cost:.3g}",
    ):
        assert text in out, text


def test_report_uses_configs_prices_yaml_of_the_working_directory(tmp_path, run_dir, capsys, monkeypatch):
    (tmp_path / "configs").mkdir()
    write_book(tmp_path / "configs" / "prices.yaml", PRICE_BOOK)
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost"]["prices_file"] == str(Path("configs") / "prices.yaml")
    assert main(["report", str(run_dir), "--json", "--prices", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["cost"]["status"] == "absent"


@pytest.mark.parametrize(
    ("argv_tail", "fragment"),
    [
        (["--prices", "{missing}"], "cannot read price file"),
        (["--prices", "{bad}"], "providers.acme.models.m1.output_per_mtok: Field required"),
        (["--monthly-tokens", "-3"], "monthly tokens must be a positive number"),
        (["--monthly-from-log", "{missing}"], "cannot read as Parquet"),
    ],
)
def test_cost_user_errors_are_one_line(tmp_path, run_dir, capsys, argv_tail, fragment):
    bad = write_book(
        tmp_path / "bad.yaml", _mutated(lambda b: b["providers"]["acme"]["models"]["m1"].pop("output_per_mtok"))
    )
    argv = [a.format(missing=tmp_path / "nope.yaml", bad=bad) for a in argv_tail]
    assert main(["report", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1
