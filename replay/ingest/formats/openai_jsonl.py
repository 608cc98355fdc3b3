"""OpenAI-style request logs as JSON Lines: one request a line, with its body and optionally the
response. Read line by line (per-row Python: messages must be checked one by one).

Accepted fields of a line (first one present wins):
- time: `timestamp`, `arrival_time`, `time`, `created_at`, `created`, else `response.created`.
  ISO 8601 text (no offset = UTC) or a number: epoch seconds, or epoch milliseconds when 1e11 or
  more; with `--start`, numbers are seconds after that origin.
- request body: `request`, `body` (OpenAI Batch input), or the line itself when it has top-level
  `messages` or `prompt`. From it: `messages` (chat, OpenAI shape) or `prompt` (completions, a
  string); every other body field except `model`, `stream` and `stream_options` is kept in params
  (max_tokens, temperature, stop, tools, response_format, ...).
- request_id: `request_id`, `id`, `custom_id`, else `response.id`; else `openai-jsonl-<line number>`.
- session_id: `session_id`, `conversation_id`. tag: `tag` (else `--tag`). reference: `reference`.
- api: `api`, else from `url`/`endpoint` (`.../chat/completions` -> chat, `.../completions` ->
  completions), else chat with messages, completions with a prompt, `--api` otherwise.
- response: `response` (or its `body`, as in OpenAI Batch output), or a string taken as the text:
  `usage.prompt_tokens` and `usage.completion_tokens`; text from `choices[0].message.content` or
  `choices[0].text`. Top-level `prompt_tokens`/`completion_tokens` take precedence over usage
  (unless null or empty text). Token counts are optional here: an empty one is absent.
Blank lines are skipped; source_row is the line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shadowreplay.replay.ingest.batch import SourceBatch, canonical_table, fill_request_ids
from shadowreplay.replay.ingest.json_fields import messages_problem, to_json_text
from shadowreplay.replay.ingest.json_rows import JsonRows, decode_object, printable, scalar_text
from shadowreplay.replay.ingest.jsonl_blocks import iter_line_blocks
from shadowreplay.replay.ingest.options import IngestOptions
from shadowreplay.replay.ingest.text_fields import api_column, forbid_messages_and_prompt, require_prompt, text_column
from shadowreplay.replay.ingest.times import arrival_times
from shadowreplay.replay.ingest.token_counts import token_counts

TIME_FIELDS = ("timestamp", "arrival_time", "time", "created_at", "created")
ID_FIELDS = ("request_id", "id", "custom_id")
SESSION_FIELDS = ("session_id", "conversation_id")
BODY_FIELDS = ("request", "body")
NOT_PARAMS = frozenset({"messages", "prompt", "model", "stream", "stream_options"})
# Top-level fields that are about the log line, not the request, when the line is a bare body.
LINE_FIELDS = frozenset(
    TIME_FIELDS
    + ID_FIELDS
    + SESSION_FIELDS
    + ("tag", "reference", "api", "url", "endpoint", "method", "response", "prompt_tokens", "completion_tokens")
)
COLUMNS = (
    "request_id",
    "arrival_time",
    "session_id",
    "api",
    "messages",
    "prompt",
    "params",
    "prompt_tokens",
    "completion_tokens",
    "tag",
    "response_text",
    "reference",
)


class OpenAIRequestLog:
    """An OpenAI-style JSONL request log as batches of traffic-log rows."""

    name = "openai-jsonl"
    provides_request_ids = True

    def __init__(self, path: Path, options: IngestOptions):
        self.path = path
        self.options = options

    def batches(self) -> Iterator[SourceBatch]:
        for block in iter_line_blocks(self.path, block_bytes=2 << 20):
            rows = JsonRows(COLUMNS)
            for offset, line in enumerate(block.lines()):
                number = block.first_line + offset
                if not line.strip():
                    continue
                value, why = decode_object(line)
                if value is None:
                    assert why is not None  # decode_object: no object, then why not
                    rows.reject(number, printable(line), why)
                else:
                    _add_request(rows, number, printable(line), value)
            yield self._batch(rows)

    def _batch(self, rows: JsonRows) -> SourceBatch:
        problems = rows.new_problems()
        source_rows = rows.row_numbers()
        messages = rows.column("messages")
        prompt = text_column(rows.column("prompt"), "prompt", problems, reason="invalid_prompt")
        prompt_tokens = token_counts(rows.column("prompt_tokens"), "prompt_tokens", problems, required=False)
        tag = rows.column("tag")
        if self.options.tag is not None:
            tag = tag.fill_null(self.options.tag)
        columns = {
            "request_id": fill_request_ids(rows.column("request_id"), source_rows, self.name),
            "arrival_time": arrival_times(
                rows.column("arrival_time"), "arrival_time", problems, origin=self.options.start, relative_unit="s"
            ),
            "session_id": rows.column("session_id"),
            "messages": messages,
            "prompt": prompt,
            "params": rows.column("params"),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": token_counts(
                rows.column("completion_tokens"), "completion_tokens", problems, required=False
            ),
            "tag": tag,
            "response_text": rows.column("response_text"),
            "reference": rows.column("reference"),
        }
        forbid_messages_and_prompt(messages, prompt, problems)
        columns["api"] = api_column(rows.column("api"), messages, prompt, self.options.api, problems)
        require_prompt(messages, prompt, prompt_tokens, problems)
        return SourceBatch(
            canonical_table(columns, len(rows)), source_rows, problems, rows.raw.__getitem__, rows.unparsed
        )


def _first(mapping: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        if mapping.get(name) is not None:
            return mapping[name]
    return None


def _add_request(rows: JsonRows, number: int, raw: str, line: dict) -> None:
    """Gather one log line's fields into `rows`, noting the problems only Python can see."""
    found: list[tuple[str, str, str]] = []
    body = _first(line, BODY_FIELDS)
    if body is None and ("messages" in line or "prompt" in line):
        body = {key: value for key, value in line.items() if key not in LINE_FIELDS}
    if body is not None and not isinstance(body, dict):
        found.append(("request", "invalid_value", f"the request body is a {type(body).__name__}, not an object"))
        body = None
    body = body or {}

    messages = body.get("messages")
    messages_text = None
    if messages is not None:
        problem = messages_problem(messages)
        if problem:
            found.append(("messages", "invalid_messages", problem))
        else:
            messages_text = to_json_text(messages)
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        found.append(("prompt", "invalid_prompt", f"prompt must be a string, got {type(prompt).__name__}"))
        prompt = None
    params = {key: value for key, value in body.items() if key not in NOT_PARAMS}

    response = line.get("response")
    response_text = response if isinstance(response, str) else None
    response = response if isinstance(response, dict) else {}
    if isinstance(response.get("body"), dict):
        response = response["body"]
    usage = response["usage"] if isinstance(response.get("usage"), dict) else {}
    if response_text is None:
        response_text = _response_text(response)

    time = _first(line, TIME_FIELDS)
    if time is None:
        time = response.get("created")
    request_id = _first(line, ID_FIELDS)
    if request_id is None:
        request_id = response.get("id")

    values = {
        "request_id": _text(request_id, "request_id", found),
        "arrival_time": scalar_text(time),
        "session_id": _text(_first(line, SESSION_FIELDS), "session_id", found),
        "api": _api_hint(line),
        "messages": messages_text,
        "prompt": prompt,
        "params": to_json_text(params) if params else None,
        "prompt_tokens": scalar_text(_token_count(line, usage, "prompt_tokens")),
        "completion_tokens": scalar_text(_token_count(line, usage, "completion_tokens")),
        "tag": _text(line.get("tag"), "tag", found),
        "response_text": response_text,
        "reference": _text(line.get("reference"), "reference", found),
    }
    index = rows.add(number, raw, values)
    for field_name, reason, detail in found:
        rows.problem(index, field_name, reason, detail)


def _token_count(line: dict, usage: dict, name: str) -> Any:
    """The line's own `name`, else the usage's: a top-level value that is absent or blank (null,
    empty text) gives way."""
    value = line.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return usage.get(name, value)
    return value


def _text(value: Any, field_name: str, found: list[tuple[str, str, str]]) -> str | None:
    """A scalar as text (numbers written out; empty text is absent); lists and objects are problems."""
    if isinstance(value, (dict, list)):
        found.append((field_name, "invalid_value", f"{field_name} is a JSON {type(value).__name__}, not text"))
        return None
    text = scalar_text(value)
    return text if text else None


def _api_hint(line: dict) -> str | None:
    if line.get("api") is not None:
        return scalar_text(line["api"])
    url = line.get("url") or line.get("endpoint")
    if isinstance(url, str):
        path = url.rstrip("/")
        if path.endswith("chat/completions"):
            return "chat"
        if path.endswith("/completions") or path == "completions":
            return "completions"
    return None


def _response_text(response: dict) -> str | None:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(part.get("text", "") for part in content if isinstance(part, dict)) or None
    text = choice.get("text")
    return text if isinstance(text, str) else None
