"""Reading assistant replies and validating their spans against the text."""

import pytest

from cattune.annotate.replies import ReplyError, extract_json, parse_reply
from cattune.annotate.validate import validate_relations

GOOD = '{"important": [{"84.0": ["89 apples", "5"]}, {"Answer": ["How many apples"]}]}'


@pytest.mark.parametrize("reply", [
    GOOD,
    f"Here you go:\n```json\n{GOOD}\n```\nLet me know if you need more.",
    f"```\n{GOOD}\n```",
    f"The relations are {GOOD} as requested.",
    '{"important": [{"84.0": ["89 apples", "5",]}, {"Answer": ["How many apples"],},]}',  # trailing commas
    '[{"84.0": ["89 apples", "5"]}, {"Answer": "How many apples"}]',  # bare list, cause as a string
    '{"84.0": ["89 apples", "5"], "Answer": ["How many apples"]}',  # plain mapping
    '{"important": [{"effect": "84.0", "causes": ["89 apples", "5"]}, {"effect": "Answer", "causes": ["How many apples"]}]}',
])
def test_reply_forms_that_are_accepted(reply):
    assert parse_reply(reply) == [("84.0", ["89 apples", "5"]), ("Answer", ["How many apples"])]


def test_numbers_as_causes_become_strings():
    assert parse_reply('{"important": [{"12": [5, 7.5]}]}') == [("12", ["5", "7.5"])]


@pytest.mark.parametrize("reply, message", [
    ("", "the reply is empty"),
    ("I cannot help with that.", "not valid JSON"),
    ('{"important": [{"84.0": ["89 apples"]', "not valid JSON"),  # truncated: no inner fragment may pass
    ('{"important": [{"84.0": ["89 apples"]}, {"Answer": ["How', "not valid JSON"),
    ('Result: [{"84.0": ["89 apples"]}, {"Answer": ["How', "not valid JSON"),
    ('{"important": []}', "holds no relation"),
    ("[]", "holds no relation"),
    ('{"important": ["84.0"]}', "must be an object"),
    ('{"important": [{"84.0": {"x": 1}}]}', "must be a list of strings"),
    ('{"important": [{"84.0": [true]}]}', "must be a list of strings"),
    ('{"important": "84.0"}', "must be a list"),
])
def test_unusable_replies_raise_with_a_reason(reply, message):
    with pytest.raises(ReplyError, match=message):
        parse_reply(reply)


def test_json_after_prose_with_brackets_is_found():
    assert parse_reply('Spans use {braces} [sic]. Answer: {"important": [{"b": ["a"]}]}') == [("b", ["a"])]
    assert parse_reply('{"important": [{"a \\" [x]": ["b"]}]}') == [('a " [x]', ["b"])]


def test_extract_json_prefers_an_annotation_over_other_json():
    reply = 'Note {"confidence": 0.9}. Result: {"important": [{"b": ["a"]}]}'
    assert extract_json(reply) == {"important": [{"b": ["a"]}]}


TEXT = "Ruth starts with 89 apples. She shares 5 with Peter. How many apples does Ruth end with?Answer: 84.0"


def test_validation_keeps_placeable_spans():
    checked = validate_relations(TEXT, [("84.0", ["89 apples", "5"]), ("Answer", ["How many apples"])])
    assert [(r.effect, r.causes) for r in checked.relations] == [("84.0", ("89 apples", "5")), ("Answer", ("How many apples",))]
    assert checked.spans_kept == 5 and checked.spans_dropped == 0


def test_validation_drops_and_counts_each_kind_of_bad_span():
    checked = validate_relations(TEXT, [
        ("84.0", ["89 apples", "89 pears", "Answer", "89 apples", ""]),  # missing, after, duplicate, empty
        ("oranges", ["Ruth"]),  # effect missing: its causes go with it
        ("89 apples", ["Peter"]),  # the only cause comes later: relation dropped
        ("", ["Ruth"]),
    ])
    assert [(r.effect, r.causes) for r in checked.relations] == [("84.0", ("89 apples", "Answer"))]
    reasons = [(d.role, d.span, d.reason) for d in checked.dropped]
    assert reasons == [
        ("cause", "89 pears", "not_in_text"),
        ("cause", "89 apples", "duplicate"),
        ("cause", "", "empty"),
        ("effect", "oranges", "not_in_text"),
        ("cause", "Ruth", "effect_dropped"),
        ("cause", "Peter", "not_before_effect"),
        ("effect", "89 apples", "no_valid_cause"),
        ("effect", "", "empty"),
        ("cause", "Ruth", "effect_dropped"),
    ]
    assert checked.spans_kept == 3


def test_validation_uses_word_boundaries_and_any_earlier_occurrence():
    text = "Smoking: 10, Weight: 1 Answer: Smoking: 1"
    # "Smoking: 1" occurs only at the end (not inside "Smoking: 10"): it cannot cause "Answer".
    checked = validate_relations(text, [("Answer", ["Smoking: 1", "Weight: 1"])])
    assert checked.relations[0].causes == ("Weight: 1",)
    assert checked.dropped[0].reason == "not_before_effect"
    # A span that occurs twice may cause its own later occurrence.
    assert validate_relations("5 apples and 5 apples", [("5 apples", ["5 apples"])]).relations


def test_duplicates_can_be_kept_for_rules():
    checked = validate_relations("a: 19.6, b: 19.6 Answer: 3", [("Answer: 3", ["19.6", "19.6"])], keep_duplicates=True)
    assert checked.relations[0].causes == ("19.6", "19.6") and not checked.dropped
