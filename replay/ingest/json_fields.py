"""The JSON-carrying fields of a traffic-log row: chat `messages`, request `params` and
`prefix_block_ids`. Each has a check on a decoded Python value (used row by row by the JSONL
readers) and a column version (used by the table reader) that accepts JSON text or nested Arrow
values and returns the canonical column.

OpenAI-shaped messages: a non-empty list of objects, each with a `role` among system, developer,
user, assistant, tool, function, and a `content` that is a string or a list of content-part
objects with a string `type`; content may be null (or absent) only for an assistant message
(tool calls). Params: a JSON object. Prefix block ids: a list of integers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.replay.ingest.casting import cast_locating_failures
from shadowreplay.replay.ingest.problems import RowProblems

MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PREFIX_BLOCK_IDS_TYPE = pa.list_(pa.int64())


def to_json_text(value: Any) -> str:
    """Compact JSON text, UTF-8 kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def messages_problem(messages: Any) -> str | None:
    """Why `messages` (decoded JSON) is not a list of OpenAI chat messages, or None when it is."""
    if not isinstance(messages, list):
        return f"messages must be a JSON list, got {type(messages).__name__}"
    if not messages:
        return "messages is an empty list"
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{position}] is not an object"
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            return f"messages[{position}].role {role!r} is not one of {sorted(MESSAGE_ROLES)}"
        content = message.get("content")
        if content is None:
            if role != "assistant":
                return f"messages[{position}] ({role}) has no content"
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    return f"messages[{position}].content[{part_index}] is not a content part with a type"
        elif not isinstance(content, str):
            return f"messages[{position}].content must be a string or a list of parts, got {type(content).__name__}"
    return None


def params_problem(params: Any) -> str | None:
    """Why `params` (decoded JSON) is not a JSON object, or None when it is."""
    if not isinstance(params, dict):
        return f"params must be a JSON object, got {type(params).__name__}"
    return None


def prefix_block_ids_problem(ids: Any) -> str | None:
    """Why `ids` (decoded JSON) is not a list of integers, or None when it is."""
    if not isinstance(ids, list):
        return f"prefix_block_ids must be a list, got {type(ids).__name__}"
    for position, block in enumerate(ids):
        if isinstance(block, bool) or not isinstance(block, int) or not -(2**63) <= block < 2**63:
            return f"prefix_block_ids[{position}]={block!r} is not a 64-bit integer"
    return None


def messages_column(values: pa.Array, problems: RowProblems, field: str = "messages") -> pa.Array:
    """Canonical `messages` (JSON text) from JSON text or nested values; flags `invalid_messages`."""
    return _json_column(values, field, "invalid_messages", messages_problem, problems)


def params_column(values: pa.Array, problems: RowProblems, field: str = "params") -> pa.Array:
    """Canonical `params` (JSON object text) from JSON text or a struct/map column; flags `invalid_params`."""
    return _json_column(values, field, "invalid_params", params_problem, problems)


def prefix_block_ids_column(values: pa.Array, problems: RowProblems, field: str = "prefix_block_ids") -> pa.Array:
    """Canonical `prefix_block_ids` (list<int64>) from a list column or JSON text; flags
    `invalid_prefix_block_ids`."""
    reason = "invalid_prefix_block_ids"
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), PREFIX_BLOCK_IDS_TYPE)
    if (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_list_view(kind)
    ):
        cast, failed = cast_locating_failures(values, PREFIX_BLOCK_IDS_TYPE)
        problems.flag_rows(
            failed, field, reason, lambda i: f"{field}={values[i].as_py()!r} holds a value that is not a 64-bit integer"
        )
        return cast
    if not _is_text(kind):
        problems.flag(values.is_valid(), field, reason, f"{field} column of type {kind} is not a list")
        return pa.nulls(len(values), PREFIX_BLOCK_IDS_TYPE)
    decoded: list[list[int] | None] = []
    for index, text in enumerate(pc.cast(values, pa.string()).to_pylist()):
        ids = _decode(text, index, field, reason, prefix_block_ids_problem, problems)
        decoded.append(ids)
    return pa.array(decoded, type=PREFIX_BLOCK_IDS_TYPE)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _decode(
    text: str | None, index: int, field: str, reason: str, check: Callable[[Any], str | None], problems: RowProblems
) -> Any:
    """Decode one JSON text and check it; flags and returns None when it fails."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        problems.flag_rows([index], field, reason, f"{field} is not valid JSON: {exc}")
        return None
    problem = check(value)
    if problem is not None:
        problems.flag_rows([index], field, reason, problem)
        return None
    return value


def _json_column(
    values: pa.Array, field: str, reason: str, check: Callable[[Any], str | None], problems: RowProblems
) -> pa.Array:
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    texts: list[str | None] = []
    if _is_text(kind):
        for index, text in enumerate(pc.cast(values, pa.string()).to_pylist()):
            value = _decode(text, index, field, reason, check, problems)
            texts.append(text if value is not None else None)
    else:
        for index, value in enumerate(values.to_pylist()):
            if value is None:
                texts.append(None)
                continue
            if isinstance(value, list) and value and all(isinstance(item, tuple) for item in value):
                value = dict(value)  # an Arrow map column reads back as key/value pairs
            problem = check(value)
            if problem is not None:
                problems.flag_rows([index], field, reason, problem)
                texts.append(None)
            else:
                texts.append(to_json_text(value))
    return pa.array(texts, type=pa.string())
