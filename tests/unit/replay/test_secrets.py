"""replay/secrets.py: keys read from the environment or a file, and the one scrubber."""

from __future__ import annotations

import pytest

from shadowreplay.errors import ShadowReplayError
from shadowreplay.replay.secrets import REDACTED, KeyReadError, Scrubber, read_key

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
