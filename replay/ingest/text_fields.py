"""The plain-text fields of a traffic-log row (request_id, session_id, tag, prompt, response_text,
reference) and the rules that tie a row together: which `api` it uses and whether it carries
anything to replay (messages, a prompt, or a prompt token count)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.replay.ingest.casting import cast_locating_failures
from shadowreplay.replay.ingest.problems import RowProblems
from shadowreplay.replay.schemas.traffic_log import API_VALUES


def text_column(values: pa.Array, field: str, problems: RowProblems, *, reason: str = "invalid_value") -> pa.Array:
    """`values` as a string column: text as is, numbers written out (a numeric session id);
    other values (lists, objects, invalid UTF-8) are flagged with `reason`."""
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_string(kind):
        return values
    castable = (
        pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_dictionary(kind)
    )
    if castable:
        cast, failed = cast_locating_failures(values, pa.string())
        problems.flag_rows(failed, field, reason, lambda i: f"{field} is not valid UTF-8 text")
        return cast
    problems.flag(values.is_valid(), field, reason, lambda i: f"{field}={values[i].as_py()!r} is not text")
    return pa.nulls(len(values), pa.string())


def api_column(
    values: pa.Array | None, messages: pa.Array, prompt: pa.Array, default_api: str, problems: RowProblems
) -> pa.Array:
    """The `api` of each row: the given value when present (it must be `chat` or `completions` and
    agree with the row: messages need chat, a prompt needs completions); otherwise chat for rows with
    messages, completions for rows with a prompt, and `default_api` for rows with neither."""
    if default_api not in API_VALUES:
        raise ValueError(f"api must be one of {API_VALUES}, not {default_api!r}")
    derived = pc.if_else(messages.is_valid(), "chat", pc.if_else(prompt.is_valid(), "completions", default_api))
    if values is None or values.null_count == len(values):
        return derived
    given = pc.utf8_lower(pc.utf8_trim_whitespace(text_column(values, "api", problems, reason="invalid_api")))
    known = pc.is_in(given, value_set=pa.array(API_VALUES))
    problems.flag(
        pc.and_(given.is_valid(), pc.invert(known)),
        "api",
        "invalid_api",
        lambda i: f"api={values[i].as_py()!r} is not one of {list(API_VALUES)}",
    )
    contradicts = pc.or_(
        pc.and_(messages.is_valid(), pc.equal(given, "completions")),
        pc.and_(prompt.is_valid(), pc.equal(given, "chat")),
    )
    problems.flag(
        contradicts,
        "api",
        "invalid_api",
        lambda i: f"api={values[i].as_py()!r} contradicts the row's {'messages' if messages[i].is_valid else 'prompt'}",
    )
    return pc.coalesce(given, derived)


def require_prompt(messages: pa.Array, prompt: pa.Array, prompt_tokens: pa.Array, problems: RowProblems) -> None:
    """Flag rows with nothing to replay: no messages, no prompt and no prompt token count."""
    if prompt_tokens.null_count == 0:
        return
    empty = pc.and_(pc.and_(messages.is_null(), prompt.is_null()), prompt_tokens.is_null())
    problems.flag(empty, "prompt_tokens", "missing_prompt", "neither messages, nor prompt, nor prompt_tokens")


def forbid_messages_and_prompt(messages: pa.Array, prompt: pa.Array, problems: RowProblems) -> None:
    """Flag rows that carry both chat messages and a completions prompt."""
    if messages.null_count == len(messages) or prompt.null_count == len(prompt):
        return
    both = pc.and_(messages.is_valid(), prompt.is_valid())
    problems.flag(both, "prompt", "invalid_prompt", "the row has both messages and a prompt")
