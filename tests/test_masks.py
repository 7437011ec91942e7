"""Word-level relations -> supervised rows and cause columns (METHOD.md section 3).

Exact row/column sets are checked with a word-level tokenizer built in-process (one token per word
or punctuation run, so token indices can be read off the text); the same properties are then
checked with a GPT-2-style byte-level BPE (offsets that include the leading space) and, marked
slow, with the SmolLM2 (Llama-style) tokenizer.
"""

from __future__ import annotations

import re

import pytest
from word_tokenizer import word_tokenizer

from cattune.data import stg
from cattune.data.records import Record, Relation
from cattune.encoding import IGNORE_INDEX, encode_record
from cattune.masks import MaskStats, causal_rows, char_range_to_tokens, find_occurrences, span_columns


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Offsets of the word tokenizer, without a tokenizer: words and punctuation runs."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]+", text)]


TEXT = "Smoking : 8 , Weight : 4 , Yellow fingers : 12 Answer : High Risk"
#        0       1 2 3 4      5 6 7 8      9       10 11 12    13 14  15


# --- spans -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "span", "expected"), [
    ("Smoking: 10, Weight: 1", "Smoking: 1", []),
    ("Smoking: 10, Smoking: 1", "Smoking: 1", [(13, 23)]),
    ("a 15 and 5.0 and 5", "5", [(17, 18)]),
    ("Answer: 84.0", "84", []),
    ("He has 1.5 and 1.", "1", [(15, 16)]),  # a sentence-final period is not a decimal point
    ("pick A.B", "A.", [(5, 7)]),  # a span ending in punctuation may be followed by anything
    ("cat cats cat", "cat", [(0, 3), (9, 12)]),
    ("$5 and $50", "$5", [(0, 2)]),
    ("x", "", []),
])
def test_find_occurrences(text, span, expected):
    assert find_occurrences(text, span) == expected


def test_char_range_to_tokens_overlap_and_special_tokens():
    offsets = [(0, 0), (0, 4), (4, 8), (8, 9), (9, 11)]  # a special token first, then "Here", " was", ...
    assert char_range_to_tokens(offsets, 5, 8) == [2]  # " was" overlaps "was" although it starts at the space
    assert char_range_to_tokens(offsets, 0, 4) == [1]  # the zero-width special token never overlaps
    assert char_range_to_tokens(offsets, 8, 11) == [3, 4]
    assert char_range_to_tokens(offsets, 11, 12) == []


# --- exact rows and columns ----------------------------------------------------------------------------

def test_exact_rows_and_columns_with_the_shift():
    rel = Relation("High Risk", ("Smoking : 8", "Weight : 4"))
    result = causal_rows(TEXT, word_offsets(TEXT), [rel])
    # "High Risk" is tokens 14..15: rows 13 and 14 predict them (row i predicts token i + 1).
    assert result.rows == {13: (0, 1, 2, 4, 5, 6), 14: (0, 1, 2, 4, 5, 6)}
    s = result.stats
    assert (s.relations, s.effects_found, s.causes_found, s.pairs, s.rows) == (1, 1, 2, 2, 2)
    assert (s.effects_missing, s.causes_missing, s.rows_truncated, s.columns_truncated) == (0, 0, 0, 0)


def test_effect_inside_the_prompt_and_several_relations():
    rels = [Relation("Yellow fingers : 12", ("Smoking : 8",)), Relation("Risk", ("Weight : 4", "Yellow fingers"))]
    result = causal_rows(TEXT, word_offsets(TEXT), rels)
    # "Yellow fingers : 12" is tokens 8..11 -> rows 7..10 get Smoking's tokens 0..2; "Risk" is token
    # 15 -> row 14 gets Weight (4..6) and Yellow fingers (8, 9).
    assert result.rows == {7: (0, 1, 2), 8: (0, 1, 2), 9: (0, 1, 2), 10: (0, 1, 2), 14: (4, 5, 6, 8, 9)}


def test_adjacent_cause_is_skipped_by_default_and_otherwise_its_own_row():
    text = "Tom has 3 apples Answer : 3"
    rel = Relation("has 3 apples", ("Tom",))
    # "Tom" (token 0) ends right before the effect (tokens 1..3): the released code skips the pair.
    skipped = causal_rows(text, word_offsets(text), [rel])
    assert skipped.rows == {} and skipped.stats.pairs_skipped_adjacent == 1
    # Kept, row 0 (which predicts "has") attends to token 0 itself: columns j <= row.
    kept = causal_rows(text, word_offsets(text), [rel], skip_adjacent=False)
    assert kept.rows == {0: (0,), 1: (0,), 2: (0,)}


def test_cause_after_effect_is_skipped():
    result = causal_rows(TEXT, word_offsets(TEXT), [Relation("Smoking : 8", ("High Risk",))])
    assert result.rows == {}
    assert result.stats.pairs == 0 and result.stats.pairs_skipped_order == 1


def test_only_earlier_cause_occurrences_pair_with_an_effect():
    text = "Tom has 5 . Answer : 5 apples . 5"
    rel = Relation("apples", ("5",))
    result = causal_rows(text, word_offsets(text), [rel])
    # "5" occurs at tokens 2, 6 and 9; "apples" is token 7 (row 6). Token 6 ends right before
    # the effect (adjacent, skipped by default), token 9 comes after it.
    assert result.rows == {6: (2,)}
    assert (result.stats.pairs, result.stats.pairs_skipped_adjacent, result.stats.pairs_skipped_order) == (1, 1, 1)
    kept = causal_rows(text, word_offsets(text), [rel], skip_adjacent=False)
    assert kept.rows == {6: (2, 6)}
    assert kept.stats.pairs == 2 and kept.stats.pairs_skipped_adjacent == 0


def test_every_effect_occurrence_is_supervised():
    text = "Tom has 4 apples , Tom has 4 pears"
    result = causal_rows(text, word_offsets(text), [Relation("has 4", ("Tom",))])
    # "Tom" (0, 5) precedes "has 4" (1..2 and 6..7); the adjacent pairs (0 -> 1, 5 -> 6) are
    # skipped; token 0 also pairs with the second occurrence.
    assert result.rows == {5: (0,), 6: (0,)}
    assert result.stats.pairs == 1 and result.stats.pairs_skipped_adjacent == 2


def test_missing_spans_are_counted_not_hidden():
    rels = [Relation("High Risk", ("Smoking : 8", "Smoking : 1", "Exercise : 2")), Relation("Medium", ("Weight : 4",))]
    result = causal_rows(TEXT, word_offsets(TEXT), rels)
    assert result.rows == {13: (0, 1, 2), 14: (0, 1, 2)}
    s = result.stats
    assert (s.effects_found, s.effects_missing, s.causes_found, s.causes_missing) == (1, 1, 2, 2)
    assert s.missing_spans == [("cause", "Smoking : 1"), ("cause", "Exercise : 2"), ("effect", "Medium")]


@pytest.mark.parametrize(("max_length", "rows", "rows_truncated", "columns_truncated"), [
    (None, {13: (0, 1, 2), 14: (0, 1, 2)}, 0, 0),
    (16, {13: (0, 1, 2), 14: (0, 1, 2)}, 0, 0),
    (15, {13: (0, 1, 2), 14: (0, 1, 2)}, 0, 0),  # row 14 predicts token 15, but the row itself is kept
    (14, {13: (0, 1, 2)}, 1, 3),
    (13, {}, 2, 6),
    (2, {}, 2, 6),
])
def test_truncation_drops_and_counts(max_length, rows, rows_truncated, columns_truncated):
    result = causal_rows(TEXT, word_offsets(TEXT), [Relation("High Risk", ("Smoking : 8",))], max_length=max_length)
    assert result.rows == rows
    assert (result.stats.rows_truncated, result.stats.columns_truncated) == (rows_truncated, columns_truncated)


def test_mask_stats_add_up():
    a = causal_rows(TEXT, word_offsets(TEXT), [Relation("High Risk", ("Smoking : 8", "nothing"))]).stats
    b = causal_rows(TEXT, word_offsets(TEXT), [Relation("Low", ("Weight : 4",))]).stats
    total = MaskStats()
    total.add(a)
    total.add(b)
    assert (total.relations, total.effects_found, total.effects_missing, total.causes_found, total.causes_missing) == (2, 1, 1, 2, 1)
    assert total.rows == 2 and total.missing_spans == [("cause", "nothing"), ("effect", "Low")]


def test_span_columns():
    offsets = word_offsets(TEXT)
    assert span_columns(TEXT, offsets, ["Yellow fingers : 12", "Weight : 4"]) == (4, 5, 6, 8, 9, 10, 11)
    assert span_columns(TEXT, offsets, ["Yellow fingers : 12"], max_length=10) == (8, 9)
    assert span_columns(TEXT, offsets, ["absent"]) == ()


# --- through encode_record: prompt + target + eos ---------------------------------------------------

def test_encode_record_shift_labels_and_rows_with_a_word_tokenizer():
    tok = word_tokenizer()
    rec = Record(input="Smoking: 8, Weight: 4 Answer: ", target="High Risk",
                 important=(Relation("High Risk", ("Smoking: 8", "Weight: 4")),))
    ex = encode_record(tok, rec)
    tokens = tok.convert_ids_to_tokens(ex.input_ids)
    assert tokens == ["Smoking", ":", "8", ",", "Weight", ":", "4", "Answer", ":", "High", "Risk", "<eos>"]
    assert ex.labels == [IGNORE_INDEX] * 9 + ex.input_ids[9:]
    assert ex.offsets[9] == (30, 34) and ex.offsets[-1] == (0, 0)  # target offsets shifted by len(input)
    assert ex.rows.rows == {8: (0, 1, 2, 4, 5, 6), 9: (0, 1, 2, 4, 5, 6)}
    assert not ex.truncated
    cut = encode_record(tok, rec, max_length=9)
    assert cut.truncated and len(cut.input_ids) == 9 and cut.rows.rows == {8: (0, 1, 2, 4, 5, 6)}
    assert cut.rows.stats.rows_truncated == 1


def _check_stg_record(tok, record: Record) -> None:
    """Properties every tokenizer must give an STG record: the rows are exactly the positions
    that predict the target tokens, and the columns are exactly the tokens of the cause pairs."""
    ex = encode_record(tok, record)
    target_start = len(record.input)
    target_tokens = [i for i, (a, b) in enumerate(ex.offsets) if b > a and a >= target_start]
    assert sorted(ex.rows.rows) == [t - 1 for t in target_tokens]
    expected_cols = set()
    for span in record.important[0].causes:
        (start, end), = find_occurrences(record.text, span)
        expected_cols.update(char_range_to_tokens(ex.offsets, start, end))
    for cols in ex.rows.rows.values():
        assert set(cols) == expected_cols
    # The columns cover the cause text and nothing but cause text (plus a token's leading space).
    covered = "".join(record.text[a:b] for a, b in (ex.offsets[j] for j in sorted(expected_cols)))
    assert covered.replace(",", "").split() == " ".join(record.important[0].causes).split()
    assert ex.rows.stats.causes_missing == 0 and ex.rows.stats.effects_missing == 0


def _stg_record(causes: dict[str, int], order) -> Record:
    values = {**dict.fromkeys(stg.VARIABLES, 3), **causes}
    obj = stg.make_record(values, order)
    return Record(input=obj["input"], target=obj["target"],
                  important=tuple(Relation(e, tuple(c)) for rel in obj["important"] for e, c in rel.items()))


STG_ORDERS = [
    ("Smoking", "Weight", "Exercise", "Yellow fingers", "Clothing size", "Hormones", "Certain gene", "Room size"),
    ("Hormones", "Exercise", "Yellow fingers", "Room size", "Weight", "Certain gene", "Smoking", "Clothing size"),
]


@pytest.mark.parametrize("order", STG_ORDERS)
def test_gpt2_style_tokenizer(order):
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    _check_stg_record(tok, _stg_record({"Smoking": 10, "Weight": 1, "Exercise": 7}, order))
    # Offsets that start at the leading space must not hide a word-boundary miss.
    rec = _stg_record({"Smoking": 10}, order)
    rec.important = (Relation(rec.target, ("Smoking: 1",)),)
    ex = encode_record(tok, rec)
    assert ex.rows.rows == {} and ex.rows.stats.causes_missing == 1


@pytest.mark.slow
@pytest.mark.parametrize("order", STG_ORDERS)
def test_llama_style_tokenizer(order):
    from cattune.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    _check_stg_record(tok, _stg_record({"Smoking": 10, "Weight": 1, "Exercise": 7}, order))
    # SmolLM2 splits numbers into single digits: "Smoking: 1" is a token prefix of "Smoking: 10"
    # and must still not match.
    rec = _stg_record({"Smoking": 10}, order)
    rec.important = (Relation(rec.target, ("Smoking: 1",)),)
    assert encode_record(tok, rec).rows.stats.causes_missing == 1
