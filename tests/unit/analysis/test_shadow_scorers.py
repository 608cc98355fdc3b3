"""analysis/shadow/scorers.py: each scorer's verdicts (right, wrong, unscored and failed rows), the errors that
name a bad reference's row, ScorerSpec's two written forms and its option checks, and the output checks."""

from __future__ import annotations

import json

import polars as pl
import pytest

from shadowreplay.analysis.shadow.scorers import (
    DEFAULT_REFUSAL_PHRASES,
    ScorerError,
    ScorerSpec,
    asks_for_json,
    chosen_letter,
    json_valid,
    last_number,
    looks_like_json,
    refusals,
    score,
)
from shadowreplay.errors import ShadowReplayError


def scored(spec: ScorerSpec | str | dict, outputs: list[str | None], references: list[str | None]) -> list[bool | None]:
    """score over plain lists, checking the result's shape on the way."""
    if not isinstance(spec, ScorerSpec):
        spec = ScorerSpec.parse(spec)
    result = score(spec, pl.Series(outputs, dtype=pl.String), pl.Series(references, dtype=pl.String))
    assert result.name == "correct"
    assert result.dtype == pl.Boolean
    assert result.len() == len(outputs)
    return result.to_list()


# ---- the null rules, every scorer ---------------------------------------------------------------

RIGHT_ANSWERS = {
    "exact": ("Paris", "Paris"),
    "normalized": ("Paris", "paris"),
    "contains": ("It is Paris.", "paris"),
    "regex": ("It is Paris.", "par.s"),
    "numeric": ("42", "42"),
    "json_schema": ('{"a": 1}', '{"type": "object"}'),
    "choice": ("B", "B"),
}


@pytest.mark.parametrize("kind", sorted(RIGHT_ANSWERS))
def test_every_scorer_leaves_unreferenced_rows_unscored_and_fails_a_missing_answer(kind: str):
    output, reference = RIGHT_ANSWERS[kind]
    outputs = [output, None, output, None]
    references = [reference, reference, None, None]
    assert scored(kind, outputs, references) == [True, False, None, None]


def test_an_all_null_reference_column_scores_nothing():
    result = score(ScorerSpec(kind="exact"), pl.Series(["a", None]), pl.Series([None, None]))
    assert result.dtype == pl.Boolean
    assert result.to_list() == [None, None]


def test_outputs_and_references_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        score(ScorerSpec(kind="exact"), pl.Series(["a", "b"]), pl.Series(["a"]))


# ---- exact, normalized, contains --------------------------------------------------------------


def test_exact_is_byte_for_byte():
    outputs = ["Paris", "paris", "Paris ", "Lyon", None]
    references = ["Paris", "Paris", "Paris", "Paris", "Paris"]
    assert scored("exact", outputs, references) == [True, False, False, False, False]


def test_normalized_trims_collapses_whitespace_and_ignores_case():
    outputs = ["  New   York\n", "NEW\tYORK", "New-York", "Newyork", "new york city", None, "x"]
    references = ["new york", "New York", "new york", "new york", "new york", "new york", None]
    assert scored("normalized", outputs, references) == [True, True, False, False, False, False, None]


def test_normalized_lowercases_non_ascii_letters():
    assert scored("normalized", ["ÉCOLE", "Straße"], ["école", "strasse"]) == [
        True,
        False,
    ]  # to_lowercase, not casefold


def test_contains_finds_the_normalized_reference_in_the_normalized_output():
    outputs = ["The capital is  PARIS, France.", "It is Lyon.", "pa ris", "The answer:\n\nNew\nYork", None]
    references = ["Paris", "Paris", "Paris", "new york", "Paris"]
    assert scored("contains", outputs, references) == [True, False, False, True, False]


def test_contains_is_literal_not_a_regex():
    assert scored("contains", ["costs 1.5", "costs 105"], ["1.5", "1.5"]) == [True, False]


def test_contains_case_sensitive_keeps_case_but_still_normalizes_whitespace():
    spec = {"kind": "contains", "case_sensitive": True}
    outputs = ["The  Paris   Agreement", "the paris agreement"]
    assert scored(spec, outputs, ["Paris Agreement", "Paris Agreement"]) == [True, False]


# ---- regex ------------------------------------------------------------------------------------


def test_regex_uses_the_reference_as_the_pattern_ignoring_case():
    outputs = ["Answer: 42 apples", "answer: forty-two", "ANSWER:\n42", None]
    references = [r"answer:\s*\d+", r"answer:\s*\d+", r"answer:.42", r"\d+"]
    assert scored("regex", outputs, references) == [True, False, True, False]


def test_regex_case_sensitive():
    spec = {"kind": "regex", "case_sensitive": True}
    assert scored(spec, ["Paris", "paris"], ["Paris", "Paris"]) == [True, False]


def test_regex_placeholder_is_the_escaped_reference():
    spec = ScorerSpec(kind="regex", pattern=r"\bthe total is \$?{reference}\b")
    outputs = ["So the total is $1.50 today", "so THE TOTAL IS 1x50", "the total is 1.500", "the total is 2.50"]
    references = ["1.50", "1.50", "1.50", "1.50"]
    assert scored(spec, outputs, references) == [True, False, False, False]


def test_regex_braces_other_than_the_placeholder_are_regex_syntax():
    spec = ScorerSpec(kind="regex", pattern=r"^{reference}-\d{3}$")
    assert scored(spec, ["ab-123", "ab-12", "a+b-123"], ["ab", "ab", "a+b"]) == [True, False, True]


def test_regex_a_reference_that_does_not_compile_names_its_row_and_pattern():
    with pytest.raises(ScorerError, match=r"row 2: regex pattern '\(unclosed' does not compile"):
        scored("regex", ["a", "b", "c"], ["a", "b", "(unclosed"])


def test_regex_a_bad_reference_raises_even_on_a_failed_request():
    with pytest.raises(ScorerError, match="row 0"):
        scored("regex", [None], ["[z-a]"])


def test_a_fixed_pattern_that_does_not_compile_is_refused_when_the_spec_is_made():
    with pytest.raises(ScorerError, match=r"pattern '\(\{reference\}' does not compile"):
        ScorerSpec.parse({"kind": "regex", "pattern": "({reference}"})


# ---- numeric ----------------------------------------------------------------------------------


def test_numeric_tolerance_edges():
    spec = {"kind": "numeric", "tolerance": 0.01}
    outputs = ["1.01", "0.99", "1.0100001", "0.9899999", "1"]
    assert scored(spec, outputs, ["1.0"] * 5) == [True, True, False, False, True]


def test_numeric_exact_by_default():
    assert scored("numeric", ["42.0", "42.000001", "4.2e1", "-42"], ["42", "42", "42", "42"]) == [
        True,
        False,
        True,
        False,
    ]


def test_numeric_relative_tolerance_edges():
    spec = {"kind": "numeric", "rel_tolerance": 0.05}
    outputs = ["210", "190", "210.001", "-210"]
    assert scored(spec, outputs, ["200", "200", "200", "-200"]) == [True, True, False, True]


def test_numeric_tolerances_add():
    spec = {"kind": "numeric", "tolerance": 1.0, "rel_tolerance": 0.1}  # 1 + 0.1 * 100 = 11
    assert scored(spec, ["111", "111.01", "89"], ["100", "100", "100"]) == [True, False, True]


def test_numeric_thousands_separators_in_output_and_reference():
    outputs = ["The total is 1,234,567.", "about 1234567.0", "1,234", "12,34"]
    references = ["1234567", "1,234,567", "1234", "1234"]
    assert scored("numeric", outputs, references) == [True, True, True, False]


def test_numeric_the_last_number_wins():
    outputs = ["First 12, then 7 more, so 19.", "19 is wrong; the answer is 20", "Steps: 3 and 4.\nAnswer: 19"]
    assert scored("numeric", outputs, ["19", "19", "19"]) == [True, False, True]


def test_numeric_no_number_in_the_output_is_wrong():
    assert scored("numeric", ["I don't know", "", "H2O"], ["2", "2", "2"]) == [False, False, False]


def test_numeric_signs_decimals_and_exponents():
    outputs = ["it drops to -3.5", "x = +2", "about 1.5e-3", "\u22127", ".5 of it", "from 3-5"]
    references = ["-3.5", "2", "0.0015", "-7", "0.5", "5"]
    assert scored("numeric", outputs, references) == [True, True, True, True, True, True]


def test_last_number():
    assert last_number("between 1,000 and 2,500.75 units.") == 2500.75
    assert last_number("no digits here") is None
    assert last_number("values 1,2,3") == 3.0
    assert last_number("version v1.2 then 8") == 8.0


def test_numeric_a_reference_that_is_not_a_number_names_its_row():
    with pytest.raises(ScorerError, match=r"row 1: the numeric scorer's reference 'forty' is not a number"):
        scored("numeric", ["1", "40", "2"], ["1", "forty", "2"])
    with pytest.raises(ScorerError, match="row 0"):
        scored("numeric", [None], ["$5"])


# ---- json_schema ------------------------------------------------------------------------------

SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name"],
        "additionalProperties": False,
    }
)


def test_json_schema_valid_invalid_and_fenced():
    outputs = [
        '{"name": "Ada", "age": 36}',
        '{"age": 36}',
        '{"name": "Ada", "age": -1}',
        '```json\n{"name": "Ada"}\n```',
        '```\n  {"name": "Ada"}  \n```\n',
        'Here you go: {"name": "Ada"}',
        '{"name": "Ada",}',
        '{"name": NaN}',
        None,
    ]
    assert scored("json_schema", outputs, [SCHEMA] * len(outputs)) == [
        True,
        False,
        False,
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_json_schema_per_row_schemas_and_non_object_values():
    outputs = ["[1, 2, 3]", "[1, 2, 3]", "7", '"seven"']
    references = [
        '{"type": "array", "items": {"type": "integer"}}',
        '{"type": "array", "maxItems": 2}',
        '{"type": "integer"}',
        '{"type": "integer"}',
    ]
    assert scored("json_schema", outputs, references) == [True, False, True, False]


def test_json_schema_draft_2020_12_keywords_apply():
    schema = json.dumps({"type": "array", "prefixItems": [{"type": "string"}], "items": False})
    assert scored("json_schema", ['["a"]', '["a", 1]', "[1]"], [schema] * 3) == [True, False, False]


def test_json_schema_a_reference_that_is_not_json_names_its_row():
    with pytest.raises(
        ScorerError, match=r"row 1: the json_schema scorer's reference '\{type: object\}' is not valid JSON"
    ):
        scored("json_schema", ["{}", "{}"], [SCHEMA, "{type: object}"])


def test_json_schema_a_reference_that_is_not_a_schema_names_its_row():
    with pytest.raises(ScorerError, match=r"row 2: .* is not a valid JSON schema"):
        scored("json_schema", ["{}", "{}", None], [SCHEMA, SCHEMA, '{"type": 5}'])


def test_json_schema_an_unresolvable_ref_names_its_row():
    with pytest.raises(ScorerError, match="row 0"):
        scored("json_schema", ["{}"], ['{"$ref": "#/$defs/missing"}'])


# ---- choice -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        (" D) ", "D"),
        ("E.", "E"),
        ("The answer is (C).", "C"),
        ("the answer is c.", "C"),
        ("Answer: D", "D"),
        ("**Answer:** B", "B"),
        ("The correct answer is option A because ...", "A"),
        ("Thinking: the answer is (A)? No. So the answer is (D).", "D"),
        ("B) Paris is the capital.", "B"),
        ("Let me see.\n(C) Rome is wrong\nA. Paris", "C"),
        ("The answer is a bit tricky.\nD. Madrid", "D"),
        ("I am not sure.", None),
        ("Option K) is out of range", None),
        ("", None),
    ],
)
def test_chosen_letter(output: str, letter: str | None):
    assert chosen_letter(output) == letter


def test_choice_compares_letters_written_any_way():
    outputs = ["The answer is (B).", "b", "Answer: C", "I think so", "(A)", None]
    references = ["(B)", "B.", "b", "A", "A)", "A"]
    assert scored("choice", outputs, references) == [True, True, False, False, True, False]


def test_choice_a_reference_that_is_not_a_letter_names_its_row():
    with pytest.raises(ScorerError, match=r"row 1: the choice scorer's reference 'Paris' is not a choice letter"):
        scored("choice", ["A", "B"], ["A", "Paris"])


# ---- ScorerSpec -------------------------------------------------------------------------------


def test_parse_a_bare_kind_and_a_mapping():
    assert ScorerSpec.parse("normalized") == ScorerSpec(kind="normalized")
    spec = ScorerSpec.parse({"kind": "numeric", "tolerance": 0.01})
    assert (spec.kind, spec.tolerance, spec.rel_tolerance) == ("numeric", 0.01, 0.0)
    assert (
        ScorerSpec.parse({"kind": "regex", "pattern": "x{reference}", "case_sensitive": True}).pattern == "x{reference}"
    )


def test_equal_specs_are_one_scorer():
    assert len({ScorerSpec.parse("exact"), ScorerSpec(kind="exact"), ScorerSpec.parse({"kind": "exact"})}) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"kind": "exact", "tolerance": 0.1}, r"scorer 'exact' takes no tolerance \(tolerance goes with numeric\)"),
        ({"kind": "numeric", "case_sensitive": True}, "case_sensitive goes with contains or regex"),
        ({"kind": "contains", "pattern": "x"}, "scorer 'contains' takes no pattern"),
        ({"kind": "normalized", "case_sensitive": False}, "takes no case_sensitive"),
        ({"kind": "numeric", "tolerance": -1}, "tolerance: Input should be greater than or equal to 0"),
        ({"kind": "exact", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ("fuzzy", "kind: Input should be 'exact'"),
        ({"tolerance": 1}, "kind: Field required"),
    ],
)
def test_parse_rejects_what_does_not_fit(value: str | dict, message: str):
    with pytest.raises(ScorerError, match=message) as caught:
        ScorerSpec.parse(value)
    assert isinstance(caught.value, ShadowReplayError)
    assert isinstance(caught.value, ValueError)


def test_parse_rejects_other_types():
    with pytest.raises(ScorerError, match="expected a kind name or a mapping"):
        ScorerSpec.parse(3)


def test_labels():
    assert ScorerSpec.parse("normalized").label == "normalized"
    assert ScorerSpec.parse({"kind": "numeric", "tolerance": 0.01}).label == "numeric (tolerance 0.01)"
    both = ScorerSpec.parse({"kind": "numeric", "tolerance": 0.5, "rel_tolerance": 0.02})
    assert both.label == "numeric (tolerance 0.5, rel_tolerance 0.02)"
    assert ScorerSpec.parse({"kind": "contains", "case_sensitive": True}).label == "contains (case-sensitive)"
    assert ScorerSpec.parse({"kind": "regex", "pattern": r"\d+"}).label == r"regex (pattern /\d+/)"


# ---- output checks ----------------------------------------------------------------------------


def test_refusals_default_phrases_with_either_apostrophe():
    outputs = [
        "I’m sorry, but I can’t help with that.",
        "I'm sorry, but I can't do that.",
        "i CANNOT HELP WITH this request",
        "As an AI language model, I have no opinions.",
        "She has an air of confidence.",
        "Sure! Here is the code.",
        "I'm sorry,\nbut I  can't",
        None,
    ]
    result = refusals(pl.Series(outputs))
    assert result.dtype == pl.Boolean
    assert result.to_list() == [True, True, True, True, False, False, True, None]


def test_refusals_own_phrases():
    outputs = pl.Series(["Nope, not doing it", "I’d rather not.", "Happy to help", None])
    assert refusals(outputs, ["nope", "I'd rather not"]).to_list() == [True, True, False, None]
    assert refusals(outputs, []).to_list() == [False, False, False, None]


def test_default_refusal_phrases_are_a_sensible_list():
    assert 10 <= len(DEFAULT_REFUSAL_PHRASES) <= 20
    assert "As an AI" in DEFAULT_REFUSAL_PHRASES
    assert refusals(pl.Series(list(DEFAULT_REFUSAL_PHRASES))).all()


def test_json_valid():
    outputs = [
        '{"a": 1}',
        "[1, 2]",
        '```json\n{"a": [1, 2]}\n```',
        "  \n[]\n",
        '{"a": 1',
        "42",
        '"text"',
        "not json",
        '{"a": Infinity}',
        '```json\n{"a": 1}\n``` and more',
        None,
    ]
    assert json_valid(pl.Series(outputs)).to_list() == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        None,
    ]


def test_looks_like_json():
    outputs = ['{"a": 1', " [1]", "```json\n{}\n```", "Here: {}", "", None]
    assert looks_like_json(pl.Series(outputs)).to_list() == [True, True, True, False, False, None]


def test_asks_for_json():
    params = [
        json.dumps({"response_format": {"type": "json_object"}, "temperature": 0}),
        json.dumps({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
        json.dumps({"response_format": {"type": "text"}}),
        json.dumps({"temperature": 0.7}),
        json.dumps({"response_format": "json_object"}),
        json.dumps({"response_format": None}),
        "{not json",
        "",
        None,
    ]
    result = asks_for_json(pl.Series(params, dtype=pl.String))
    assert result.dtype == pl.Boolean
    assert result.to_list() == [True, True, False, False, False, False, False, False, False]


def test_asks_for_json_on_an_all_null_column():
    assert asks_for_json(pl.Series([None, None])).to_list() == [False, False]
