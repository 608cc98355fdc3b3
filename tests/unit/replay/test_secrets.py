"""replay/secrets.py: keys read from the environment or a file, and the one scrubber; and a canary
key placed across every cut an error text meets (error bodies, error events, malformed events, a
body read in part), through both streaming clients over real HTTP on 127.0.0.1: no piece of it
may reach the outcome's error."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from typing import Literal

import aiohttp
import pytest

from shadowreplay.errors import ShadowReplayError
from shadowreplay.loadgen.locust.gevent_stream_client import GeventStreamingClient, client_pool
from shadowreplay.replay.clients.stream_client import ERROR_BODY_LIMIT, ERROR_TEXT_LIMIT, StreamingClient
from shadowreplay.replay.schemas.results import StreamOutcome
from shadowreplay.replay.secrets import REDACTED, KeyReadError, Scrubber, read_key
from shadowreplay.replay.targets.config import TargetConfig, Timeouts
from shadowreplay.replay.targets.vllm_server import VllmServer
from tests.support.canned_server import Canned, CannedServer
from tests.support.server_thread import ServerThread

KEY = "sk-canary-abcdefghijklmnopqrstuvwxyz"


def test_keys_come_from_the_variable_or_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SR_TEST_KEY", KEY)
    assert read_key("t.yaml", env_name="SR_TEST_KEY") == KEY
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert read_key("t.yaml", key_file=key_file) == KEY
    assert read_key("t.yaml") is None


def test_a_key_that_cannot_be_read_is_one_error_naming_the_source(tmp_path, monkeypatch):
    monkeypatch.delenv("SR_TEST_KEY", raising=False)
    with pytest.raises(KeyReadError, match="t.yaml: api_key_env names SR_TEST_KEY, which is not set"):
        read_key("t.yaml", env_name="SR_TEST_KEY")
    with pytest.raises(ShadowReplayError, match="t.yaml: api_key_file .*missing"):
        read_key("t.yaml", key_file=tmp_path / "missing")


def test_an_error_text_is_scrubbed_before_it_is_cut():
    """A key that straddles the cut must not survive as a fragment."""
    text = "x" * 190 + f"Bearer {KEY} rest of a long upstream error body"
    cut = Scrubber([KEY]).cut(text, 200)
    assert len(cut) <= 200
    assert not any(KEY[i : i + 6] in cut for i in range(len(KEY) - 5)), "no 6-character piece of the key"


def test_every_shape_is_scrubbed_with_one_marker():
    scrubber = Scrubber([KEY, "second-secret-value"])
    nested = {"a": [f"k={KEY}", ("second-secret-value",)], KEY: 3, "n": 1}
    assert scrubber.value(nested) == {"a": [f"k={REDACTED}", [REDACTED]], REDACTED: 3, "n": 1}
    assert scrubber.argv(["--api-key", "plain", "--api-key=other", "--model", KEY]) == [
        "--api-key",
        REDACTED,
        f"--api-key={REDACTED}",
        "--model",
        REDACTED,
    ]
    assert scrubber.env({"HF_TOKEN": "t", "VLLM_CPU_KVCACHE_SPACE": "1", "X": KEY}) == {
        "HF_TOKEN": REDACTED,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "X": REDACTED,
    }


def test_a_longer_key_that_contains_a_shorter_one_is_replaced_whole():
    assert Scrubber(["abcdef", "abcdef-and-more"]).text("k=abcdef-and-more") == f"k={REDACTED}"
    assert not Scrubber([None, ""]) and Scrubber([None, ""]).text("nothing") == "nothing"


# -- keys that would break every request -----------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "what"),
    [
        ("sk-one\nsk-two", "(newline) at position 7"),
        ("sk-\tkey", "(tab) at position 4"),
        ("sk-\x1bk", "(U+001B) at position 4"),
        ("sk-key\r", "(carriage return) at position 7"),
    ],
)
def test_a_key_with_a_control_character_is_refused_naming_where_and_not_the_key(tmp_path, monkeypatch, raw, what):
    monkeypatch.setenv("SR_TEST_KEY", raw)
    expected = f"t.yaml: api_key_env SR_TEST_KEY: the key contains a control character {what}"
    with pytest.raises(KeyReadError, match=re.escape(expected)) as refused:
        read_key("t.yaml", env_name="SR_TEST_KEY")
    assert "sk-" not in str(refused.value), "the key itself is never in the error"
    key_file = tmp_path / "key"
    key_file.write_text(raw + "x\n")  # the trailing newline is stripped; one inside the key is refused
    expected = f"t.yaml: api_key_file {key_file}: the key contains a control character {what}"
    with pytest.raises(KeyReadError, match=re.escape(expected)) as refused:
        read_key("t.yaml", key_file=key_file)
    assert "sk-" not in str(refused.value)


def test_a_key_escaped_as_repr_or_json_writes_it_is_scrubbed_too():
    odd = "sk-'quoted'\\slash/é"
    scrubber = Scrubber([odd])
    for form in (repr(odd), json.dumps(odd), json.dumps(odd, ensure_ascii=False)):
        assert odd[3:9] not in scrubber.text(f"event {form} end") and REDACTED in scrubber.text(f"event {form} end")


def test_the_head_of_a_cut_text_loses_a_trailing_piece_that_could_begin_a_key():
    scrubber = Scrubber([KEY])
    assert scrubber.head("x" * 10 + KEY[:7]) == "x" * 10 + REDACTED
    assert scrubber.head(f"{KEY} and {KEY[:1]}") == f"{REDACTED} and {REDACTED}"
    assert scrubber.head("no key here") == "no key here"


def test_a_vllm_log_tail_is_scrubbed_of_the_server_key_and_secret_variables(tmp_path):
    log = tmp_path / "vllm.log"
    lines = [f"line {i}" for i in range(50)]
    lines += [f"non-default args: {{'api_key': ['{KEY}']}}", "HF_TOKEN=hf-secret-token-value", "ready"]
    log.write_text("\n".join(lines) + "\n")
    server = VllmServer(
        model="m",
        python=sys.executable,
        args=["--api-key", KEY],
        env={"HF_TOKEN": "hf-secret-token-value"},
        log_path=log,
    )
    tail = server.log_tail()
    assert KEY not in tail and "hf-secret" not in tail
    assert f"non-default args: {{'api_key': ['{REDACTED}']}}" in tail and tail.endswith("ready")


# -- through the clients, real HTTP over 127.0.0.1 -----------------------------------------------------
# Each case puts the key where a cut falls inside it: ERROR_TEXT_LIMIT for error texts (the key
# begins `offset` characters before the cut), ERROR_BODY_LIMIT for bodies read in part. Each gives
# its canned response and the whole error text the outcome must carry, scrubbed, before its cut.
OFFSETS = (1, len(KEY) // 2, len(KEY) - 1)
CUT_AT = ERROR_TEXT_LIMIT - 3  # Scrubber.cut keeps this much and adds "..."
TAIL = " and the rest of a long error" * 20


def padded(prefix: str, offset: int) -> str:
    """Filler that puts the key `offset` characters before the error text's cut, after `prefix`."""
    return "p" * (CUT_AT - len(prefix) - offset)


def sse(*events: tuple[str | None, str]) -> bytes:
    return "".join((f"event: {name}\n" if name else "") + f"data: {data}\n\n" for name, data in events).encode()


def openai_error_body(offset: int) -> tuple[Canned, str]:
    prefix = "HTTP 500: "
    message = padded(prefix, offset) + KEY + TAIL
    body = json.dumps({"error": {"message": message}}).encode()
    return Canned(500, "application/json", body), prefix + message.replace(KEY, REDACTED)


def anthropic_error_body(offset: int) -> tuple[Canned, str]:
    prefix = "HTTP 529: overloaded_error: "
    message = padded(prefix, offset) + KEY + TAIL
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": message}}).encode()
    return Canned(529, "application/json", body), prefix + message.replace(KEY, REDACTED)


def openai_error_event(offset: int) -> tuple[Canned, str]:
    prefix = "error in stream: "
    message = padded(prefix, offset) + KEY + TAIL
    events = sse((None, json.dumps({"error": {"message": message}})), (None, "[DONE]"))
    return Canned(200, "text/event-stream", events), prefix + message.replace(KEY, REDACTED)


def anthropic_error_event(offset: int) -> tuple[Canned, str]:
    prefix = "error in stream: overloaded_error: "
    message = padded(prefix, offset) + KEY + TAIL
    error = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
    return Canned(200, "text/event-stream", sse(("error", json.dumps(error)))), prefix + message.replace(KEY, REDACTED)


def malformed_event(offset: int) -> tuple[Canned, str]:
    prefix = "invalid JSON in stream event: '{"
    data = "{" + padded(prefix, offset) + KEY + TAIL
    events = sse(("content_block_delta", data))
    return Canned(200, "text/event-stream", events), f"invalid JSON in stream event: {data!r}".replace(KEY, REDACTED)


def error_body_cut_in_the_key(offset: int) -> tuple[Canned, str]:
    """A body longer than the client reads, the key across the end of what it reads; the blanks
    before it collapse, so what was read of the key would lead the message."""
    body = " " * (ERROR_BODY_LIMIT - offset) + KEY + TAIL
    return Canned(500, "text/plain", body.encode()), f"HTTP 500: {REDACTED}"


def json_answer_cut_in_the_key(offset: int) -> tuple[Canned, str]:
    """A JSON answer to a streamed request, longer than the client reads, cut inside the key."""
    body = '{"error":' + " " * (ERROR_BODY_LIMIT - offset - 10) + '"' + KEY + '"' + TAIL + "}"
    return Canned(
        200, "application/json", body.encode()
    ), f'server answered JSON, not an event stream: {{"error": "{REDACTED}'


Kind = Literal["openai", "anthropic"]
CASES: dict[str, tuple[Kind, Callable[[int], tuple[Canned, str]]]] = {
    "openai_error_body": ("openai", openai_error_body),
    "anthropic_error_body": ("anthropic", anthropic_error_body),
    "openai_error_event": ("openai", openai_error_event),
    "anthropic_error_event": ("anthropic", anthropic_error_event),
    "openai_malformed_event": ("openai", malformed_event),
    "anthropic_malformed_event": ("anthropic", malformed_event),
    "openai_error_body_cut_in_the_key": ("openai", error_body_cut_in_the_key),
    "anthropic_error_body_cut_in_the_key": ("anthropic", error_body_cut_in_the_key),
    "json_answer_cut_in_the_key": ("openai", json_answer_cut_in_the_key),
}
CANARY_VARIABLE = "SR_CANARY_CUT_KEY"


def canary_target(kind: Kind, base_url: str) -> TargetConfig:
    return TargetConfig(
        name=f"canary-{kind}",
        kind=kind,
        base_url=base_url,
        model="unused",
        api_key_env=CANARY_VARIABLE,
        timeouts=Timeouts(connect_s=2, first_token_s=5, total_s=5),
    )


def send_aiohttp(config: TargetConfig, body: dict) -> StreamOutcome:
    async def go() -> StreamOutcome:
        async with aiohttp.ClientSession() as session:
            return await StreamingClient(session, config).send(body)

    return asyncio.run(go())


def send_gevent(config: TargetConfig, body: dict) -> StreamOutcome:
    return GeventStreamingClient(client_pool(config), config).send(body)


@pytest.fixture(scope="module")
def canned():
    """One server with every case at every offset, each under its own model name; and the error
    text each must give."""
    responses, errors = {}, {}
    for name, (_, make) in CASES.items():
        for offset in OFFSETS:
            responses[f"{name}-{offset}"], errors[f"{name}-{offset}"] = make(offset)
    with ServerThread(CannedServer(responses)) as running:
        yield running, errors


def fragments(text: str) -> list[str]:
    """The pieces of the key, 6 characters or longer, that `text` holds."""
    return [KEY[i : i + 6] for i in range(len(KEY) - 5) if KEY[i : i + 6] in text]


@pytest.mark.parametrize("send", [send_aiohttp, send_gevent], ids=["aiohttp", "gevent"])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_key_across_a_cut_leaves_no_fragment_in_the_error(canned, monkeypatch, case, offset, send):
    server, errors = canned
    monkeypatch.setenv(CANARY_VARIABLE, KEY)
    kind, _ = CASES[case]
    model = f"{case}-{offset}"
    outcome = send(
        canary_target(kind, server.base_url), {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert outcome.status in ("http_error", "stream_error"), outcome.error
    assert not fragments(outcome.error or ""), f"pieces of the key in {outcome.error!r}"
    assert outcome.error == Scrubber().cut(errors[model], ERROR_TEXT_LIMIT)
