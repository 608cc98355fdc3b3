"""The chat-template check (replay/targets/prompt_format.py) with the tiny model's real tokenizer (a Llama
template) and a copy of it whose template is Gemma-like: it raises on a system role.

The log holds chat requests with and without a system message, one with tools, one too long for a 64-token
context, a completions row (not checked) and messages that are no JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA
from shadowreplay.replay.targets.config import TargetConfig, load_target
from shadowreplay.replay.targets.prompt_format import (
    REPORT_NAME,
    TOKENS_NAME,
    UNPARSEABLE,
    PromptFormatError,
    PromptFormatReport,
    check_prompt_formats,
    parse_context_length,
    render_chat,
    target_context_tokens,
)
from tests.support.traffic_logs import log_row, write_log

GEMMA_LIKE_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
SYSTEM = {"role": "system", "content": "You are terse."}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def chat_row(i: int, messages: list[dict] | str | None, api: str = "chat", params: dict | None = None) -> dict:
    """A traffic-log row (tests/support/traffic_logs.py's) with these messages (a string is written as is)."""
    row = log_row(i, float(i))
    row["api"] = api
    row["messages"] = messages if isinstance(messages, str) or messages is None else json.dumps(messages)
    if api == "completions":
        row["prompt"] = "Once upon a time"
    if params is not None:
        row["params"] = json.dumps(params)
    return row


def log_rows() -> list[dict]:
    user = {"role": "user", "content": "Say something."}
    return [
        chat_row(0, [user]),
        chat_row(1, [SYSTEM, user]),
        chat_row(2, [SYSTEM, {"role": "user", "content": "What is the time?"}]),
        chat_row(3, [user, {"role": "assistant", "content": "Something."}, user]),
        chat_row(4, [{"role": "user", "content": "tell me more about the weather " * 20}]),
        chat_row(5, None, api="completions"),
        chat_row(6, '[{"role": "user", "content": "cut off'),
        chat_row(7, [user], params={"max_tokens": 6, "tools": TOOLS}),
    ]


def copy_tokenizer(source: Path, out: Path, chat_template: str | None) -> Path:
    """The tokenizer files of `source` in `out`, its chat template replaced (None: removed)."""
    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def target(directory: Path, name: str, **fields) -> TargetConfig:
    """A target file `name` with `fields` (JSON values) loaded as the CLI loads it."""
    lines = [f"name: {name}", "model: tiny"]
    if fields.get("kind") != "vllm":
        lines += ["kind: openai", "base_url: http://127.0.0.1:9/v1"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in fields.items()]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return load_target(path)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory) -> dict:
    """The log, the targets (llama: 64-token context; gemma: rejects system; three that cannot be checked)."""
    root = tmp_path_factory.mktemp("prompt_format")
    gemma_dir = copy_tokenizer(tiny_model_dir, root / "gemma-like", GEMMA_LIKE_TEMPLATE)
    plain_dir = copy_tokenizer(tiny_model_dir, root / "no-template", None)
    (root / "absent").mkdir()
    targets = [
        target(
            root,
            "llama",
            kind="vllm",
            tokenizer=str(tiny_model_dir),
            vllm={"model": str(tiny_model_dir), "args": ["--max-model-len", "64"]},
        ),
        target(root, "gemma", tokenizer=str(gemma_dir)),
        target(root, "hosted"),
        target(root, "plain", tokenizer=str(plain_dir)),
        target(root, "gone", tokenizer=str(root / "absent")),
    ]
    (root / "absent").rmdir()  # gone after the file was read (load_target refuses a path that does not exist)
    log = write_log(root / "log.parquet", log_rows())
    return {"root": root, "log": log, "targets": targets, "tiny": tiny_model_dir}


@pytest.fixture(scope="module")
def report(setup) -> PromptFormatReport:
    return check_prompt_formats(setup["log"], setup["targets"])


def finding(report: PromptFormatReport, target: str, roles: tuple[str, ...], tools: bool = False):
    (found,) = [s for s in report.structures if s.target == target and s.roles == roles and s.tools == tools]
    return found


def test_system_role_is_rejected_by_the_gemma_like_template_only(report):
    gemma = finding(report, "gemma", ("system", "user"))
    assert gemma.rejected and gemma.requests == 2
    assert gemma.example_ids == ("req-001", "req-002")
    assert gemma.error is not None and "System role not supported" in gemma.error
    llama = finding(report, "llama", ("system", "user"))
    assert not llama.rejected and llama.error is None and llama.requests == 2
    for name in ("llama", "gemma"):
        assert not finding(report, name, ("user",)).rejected
        assert finding(report, name, ("user", "assistant", "user")).requests == 1
        tools = finding(report, name, ("user",), tools=True)
        assert tools.requests == 1 and not tools.rejected
    assert finding(report, "llama", ("user",)).requests == 2  # req-000 and the long req-004


def test_unparseable_messages_are_a_rejected_structure(report):
    for name in ("llama", "gemma"):
        bad = finding(report, name, (UNPARSEABLE,))
        assert bad.rejected and bad.requests == 1 and bad.example_ids == ("req-006",)
        assert bad.error is not None and bad.error.startswith("JSONDecodeError")
    assert report.rejected_requests("gemma") == 3
    assert report.rejected_requests("llama") == 1


def test_counts_and_skipped_targets(report):
    assert report.targets == ("llama", "gemma", "hosted", "plain", "gone")
    assert report.chat_requests == 7  # the completions row is not chat
    assert report.checked_requests == 6  # the unparseable one has nothing to render
    assert not report.sampled
    assert report.skipped["hosted"] == "no tokenizer configured"
    assert "no chat template" in report.skipped["plain"]
    assert "missing" in report.skipped["gone"]
    assert report.checked_targets == ("llama", "gemma")
    assert report.token_counts.columns == ["request_id", "tokens_llama", "tokens_gemma"]
    assert report.render_failures == {"llama": 0, "gemma": 0}


def test_overflow_is_counted_against_the_small_context(report):
    assert report.context_tokens["llama"] == 64
    assert report.context_sources["llama"] == "vllm.args --max-model-len"
    assert report.context_tokens["gemma"] == 8192  # max_position_embeddings of the copied config.json
    assert "max_position_embeddings" in report.context_sources["gemma"]
    assert report.over_context == {"llama": 1, "gemma": 0}
    assert report.over_context_ids["llama"] == ("req-004",)


def test_token_counts_match_transformers_and_differ_between_templates(report, setup):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(setup["tiny"]))
    rows = {r["request_id"]: r for r in log_rows()}
    for request_id, tokens in zip(report.token_counts["request_id"], report.token_counts["tokens_llama"]):
        encoded = hf.apply_chat_template(
            json.loads(rows[request_id]["messages"]), tokenize=True, add_generation_prompt=True, return_dict=True
        )
        assert tokens == len(encoded["input_ids"])
    gemma = dict(zip(report.token_counts["request_id"], report.token_counts["tokens_gemma"]))
    assert gemma["req-001"] is None and gemma["req-002"] is None
    summary = report.token_difference_summary("llama", "gemma")
    assert summary["requests"] == 4  # rendered by both
    assert summary["median_difference"] != 0
    assert summary["max_abs_difference"] > 0
    assert summary["max_abs_difference_request_id"] in {"req-000", "req-003", "req-004", "req-007"}
    assert summary["median_ratio"] is not None and summary["median_ratio"] != 1
    with pytest.raises(PromptFormatError, match="not checked"):
        report.token_difference_summary("llama", "hosted")


def test_write_read_round_trip(report, tmp_path):
    assert PromptFormatReport.read(tmp_path) is None
    report.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_NAME, TOKENS_NAME]  # no temporary files left
    again = PromptFormatReport.read(tmp_path)
    assert again == report
    assert again is not None and again.token_counts.equals(report.token_counts)
    data = json.loads((tmp_path / REPORT_NAME).read_text())
    assert "llama -> gemma" in data["token_differences"] and "token_counts" not in data
    assert data["rejected_requests"] == {"llama": 1, "gemma": 3}


def test_sample_and_request_ids(setup):
    chosen = setup["targets"][:2]
    first = check_prompt_formats(setup["log"], chosen, max_requests=3)
    second = check_prompt_formats(setup["log"], chosen, max_requests=3)
    assert first.sampled and first.chat_requests == 7
    assert first.checked_requests <= 3
    assert first.token_counts.equals(second.token_counts)  # deterministic
    # the structures still count every chat request
    assert finding(first, "gemma", ("system", "user")).requests == 2
    only = check_prompt_formats(setup["log"], chosen, request_ids={"req-001", "req-005", "req-009"})
    assert only.chat_requests == 1 and only.checked_requests == 1
    assert only.rejected_requests("gemma") == 1 and only.rejected_requests("llama") == 0
    with pytest.raises(PromptFormatError):
        check_prompt_formats(setup["log"], chosen, max_requests=0)


def test_a_directory_of_shards_reads_as_one_log(setup, report, tmp_path):
    rows = log_rows()
    for index, part in enumerate((rows[:3], rows[3:])):
        pq.write_table(pa.Table.from_pylist(part, schema=TRAFFIC_LOG_SCHEMA), tmp_path / f"part-{index}.parquet")
    (tmp_path / ".part-2.parquet.tmp").write_text("half written")
    sharded = check_prompt_formats(tmp_path, setup["targets"][:2])
    assert sharded.structures == tuple(s for s in report.structures if s.target in ("llama", "gemma"))
    assert sharded.token_counts.equals(report.token_counts)


def test_context_length_sources(setup, tmp_path):
    assert parse_context_length("4096") == 4096
    assert parse_context_length("32k") == 32000
    assert parse_context_length("32K") == 32768
    assert parse_context_length("-1") is None and parse_context_length("auto") is None
    tiny = setup["tiny"]
    assert target_context_tokens(target(tmp_path, "plain-llama", tokenizer=str(tiny)))[0] == 8192
    only_tokenizer = copy_tokenizer(tiny, tmp_path / "tok", None)
    (only_tokenizer / "config.json").unlink()
    tokens, source = target_context_tokens(target(tmp_path, "tok", tokenizer=str(only_tokenizer)))
    assert tokens == 8192 and source is not None and "model_max_length" in source
    assert target_context_tokens(target(tmp_path, "none")) == (None, None)


def test_any_render_exception_is_a_rejection_with_its_type():
    class Broken:
        def apply_chat_template(self, *args, **kwargs):
            raise RuntimeError("boom\nsecond line " + "x" * 400)

    text, error = render_chat(Broken(), [{"role": "user", "content": "hi"}], None)
    assert text is None and error is not None
    assert error.startswith("RuntimeError: boom second line") and len(error) <= 300
