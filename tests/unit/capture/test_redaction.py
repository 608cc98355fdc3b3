"""Redaction before disk (replay/capture/redaction.py): each built-in rule finds its own kind and
passes over look-alikes its check digit rules out, a user's rule file is read with one-line errors,
messages stay valid JSON with their roles, and the masked text keeps its length in characters and,
on the bundled tiny Llama tokenizer, within one token a match."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from shadowreplay.replay.capture.redaction import (
    BUILTIN_RULES,
    RedactionError,
    Redactor,
    iban_valid,
    luhn_valid,
    thai_id_valid,
    token_drift,
)

SAMPLES = {
    "email": ["somchai.j@example.co.th", "a.b+tag@mail.example.com"],
    "thai_national_id": ["1-1017-00230-70-8", "1101700230708"],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
    "us_ssn": ["123-45-6789"],
    "phone": ["+66 81 234 5678", "081-234-5678", "(02) 123 4567", "+1 (415) 555-0132"],
}


def shape(text: str) -> str:
    """A text's shape as the mask keeps it: letters as x / X, digits as 9, the rest as they are."""
    return re.sub(r"\d", "9", re.sub(r"[a-z]", "x", re.sub(r"[A-Z]", "X", text)))


LOOK_ALIKES = [
    "order 4111 1111 1111 1112 shipped",  # Luhn fails
    "id 1101700230709",  # wrong check digit
    "SSN-like 000-12-3456",  # never issued
    "version 1.2.3, 42 items, year 2024, 3.14159",
    "GB82 WEST 1234 5698 7654 33",  # mod 97 fails
]


@pytest.mark.parametrize("rule", list(SAMPLES))
def test_each_builtin_rule_masks_its_own_kind_keeping_the_shape(rule):
    for sample in SAMPLES[rule]:
        redactor = Redactor.builtin()
        text = f"please contact {sample} today"
        redacted = redactor.text(text)
        assert redacted.startswith("please contact ") and redacted.endswith(" today"), redacted
        masked = redacted.removeprefix("please contact ").removesuffix(" today")
        assert shape(masked) == shape(sample) and masked != sample, (rule, sample, masked)
        assert not re.search(r"[a-wyzA-WYZ]", masked), "every letter is x or X"
        assert len(redacted) == len(text) and dict(redactor.counts) == {rule: 1}, (rule, sample, redactor.counts)


def test_look_alikes_that_fail_the_check_digits_are_left_alone():
    redactor = Redactor.builtin()
    for text in LOOK_ALIKES:
        assert redactor.text(text) == text, text
    assert not redactor.counts


def test_check_digits():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert thai_id_valid("1101700230708") and not thai_id_valid("1101700230709")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")


def test_messages_stay_json_with_their_structure_and_every_text_redacted():
    messages = [
        {"role": "system", "content": "You are a helpful agent."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "I am somchai.j@example.co.th, card 4111 1111 1111 1111"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": json.dumps({"phone": "+66 81 234 5678"})},
                }
            ],
        },
    ]
    redactor = Redactor.builtin(rng=random.Random(0))
    out = json.loads(redactor.messages(json.dumps(messages)))
    assert [m["role"] for m in out] == ["system", "user", "assistant"]
    assert out[0]["content"] == "You are a helpful agent."
    part = out[1]["content"][0]
    assert part["type"] == "text" and shape(part["text"]) == "X xx xxxxxxx.x@xxxxxxx.xx.xx, xxxx 9999 9999 9999 9999"
    assert "4111" not in part["text"]
    call = out[2]["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"]["name"] == "lookup"
    phone = json.loads(call["function"]["arguments"])["phone"]
    assert shape(phone) == "+99 99 999 9999" and phone != "+66 81 234 5678"
    assert dict(redactor.counts) == {"email": 1, "card": 1, "phone": 1}
    assert redactor.messages(None) is None and redactor.messages("not json a@b.example") == "not json x@x.xxxxxxx"


def test_a_rules_file_chooses_builtins_and_adds_its_own(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text('builtin: [email]\nrules:\n  - {name: employee_id, pattern: "EMP-[0-9]{6}"}\n')
    redactor = Redactor.from_file(path)
    assert redactor.names == ["email", "employee_id"]
    redacted = redactor.text("EMP-123456 at a@b.example, 4111 1111 1111 1111")
    assert shape(redacted) == "XXX-999999 xx x@x.xxxxxxx, 9999 9999 9999 9999" and redacted.endswith(
        "4111 1111 1111 1111"
    ), redacted
    assert dict(redactor.counts) == {"email": 1, "employee_id": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("builtin: [emails]\n", "builtin: Value error, unknown built-in rule(s) ['emails']"),
        ('rules:\n  - {name: x, pattern: "a("}\n', "rules.0.pattern: Value error, not a regular expression"),
        ('rules:\n  - {name: x, pattern: "a*"}\n', "rules.0.pattern: Value error, matches the empty string"),
        ('rules:\n  - {name: email, pattern: "a+"}\n', "rule names must be distinct; repeated: email"),
        ("rules: [{name: y}]\n", "rules.0.pattern: Field required"),
        ("- a\n", "a redaction rules file must be a mapping"),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RedactionError) as caught:
        Redactor.from_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), str(caught.value)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def drifts(hf_tokenizer, seed: int, with_tokenizer: bool) -> dict[str, int]:
    """Per sample: the tokens the masked sentence has more than the original (tiny Llama tokenizer)."""

    def count(text: str) -> int:
        return len(hf_tokenizer.encode(text, add_special_tokens=False))

    found = {}
    for rule, samples in SAMPLES.items():
        for sample in samples:
            text = f"Hello, my details are {sample} and that is all."
            redactor = Redactor.builtin([rule], rng=random.Random(seed), count_tokens=count if with_tokenizer else None)
            redacted = redactor.text(text)
            assert redacted is not None and redacted != text and len(redacted) == len(text)
            found[sample] = token_drift(text, redacted, count)
    return found


def test_with_the_tokenizer_masked_text_keeps_its_token_length_within_two_tokens_a_match(hf_tokenizer):
    """The bundled tiny Llama tokenizer (a real byte-pair tokenizer of 4,096 tokens, which merges digit
    pairs by their values) counts the original and the redacted sentence: two tokens either way at
    most, for every built-in rule's samples, and most samples exact."""
    for seed in range(3):
        found = drifts(hf_tokenizer, seed, with_tokenizer=True)
        assert all(abs(d) <= 2 for d in found.values()), (seed, found)
        assert sum(1 for d in found.values() if d == 0) >= len(found) // 2, (seed, found)
        assert sum(abs(d) for d in found.values()) < sum(abs(d) for d in drifts(hf_tokenizer, seed, False).values())


def test_without_a_tokenizer_the_drift_stays_small(hf_tokenizer):
    """Random digits and x-letters alone: a few tokens a match at most (this tokenizer merges digit
    pairs by value), and less in all than the zero mask's 43 over these samples."""
    for seed in range(3):
        found = drifts(hf_tokenizer, seed, with_tokenizer=False)
        assert max(abs(d) for d in found.values()) <= 8 and sum(abs(d) for d in found.values()) < 43, (seed, found)


def test_every_builtin_rule_has_samples():
    assert set(SAMPLES) == set(BUILTIN_RULES)


def test_the_example_rules_file_loads_and_applies():
    example = Path(__file__).resolve().parents[3] / "configs" / "redaction.example.yaml"
    redactor = Redactor.from_file(example)
    assert redactor.names == ["email", "thai_national_id", "card", "iban", "phone", "employee_id", "order_number"]
    text = redactor.text("EMP-123456 asked about Order #123456789 from a@b.co")
    assert (
        "123456" not in text
        and "a@b.co" not in text
        and len(text) == len("EMP-123456 asked about Order #123456789 from a@b.co")
    )
    assert redactor.counts == {"employee_id": 1, "order_number": 1, "email": 1}
