"""Specification of squad.py: reading and alignment, windows and max context, span
decoding on hand-made logits, the official metrics on hand-computed values, and the
errors and warnings for bad files.

The real-data check skips without ../shared/data/squad/v1.1/dev-v1.1.json.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, SPECIALS, minilm_dir, write_vocab

import squad
from tokenization import FullTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "squad"
V1 = FIXTURES / "tiny-v1.1.json"
V2 = FIXTURES / "tiny-v2.0.json"
DEV = SHARED_DATA / "squad" / "v1.1" / "dev-v1.1.json"

# One token per word, so that window arithmetic can be read off the word numbers.
WORDS = ["q"] + [f"t{i}" for i in range(30)]
EIFFEL = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It opened in 1889."
EIFFEL_VOCAB = ["the", "eiffel", "tower", "is", "a", "wrought", "-", "iron", "lattice", "in",
                "paris", ",", "france", ".", "it", "opened", "1889", "where", "?", "(", ")",
                "1887", "was", "built", "i", "like"]


def make_tokenizer(folder, tokens):
    path = folder / "vocab.txt"
    path.write_text("\n".join(SPECIALS + tokens) + "\n", encoding="utf-8")
    return FullTokenizer(path, do_lower_case=True)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("words"), WORDS)


@pytest.fixture(scope="module")
def eiffel_tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("eiffel"), EIFFEL_VOCAB)


@pytest.fixture(scope="module")
def fixture_tokenizer(tmp_path_factory):
    """Built from the fixtures' text: words seen once split into single characters."""
    texts = [text for path in (V1, V2) for article in squad.load_squad_json(path)["data"]
             for paragraph in article["paragraphs"]
             for text in [paragraph["context"]] + [qa["question"] for qa in paragraph["qas"]]]
    vocab = write_vocab(tmp_path_factory.mktemp("fixture") / "vocab.txt", " ".join(texts))
    return FullTokenizer(vocab)


def numbered_example(n_words, answer=None):
    """Question "q" on the context "t0 t1 ... t{n-1}", answer words (first, last)."""
    example = squad.example_from_text("q", " ".join(f"t{i}" for i in range(n_words)))
    if answer is not None:
        first, last = answer
        example.orig_answer_text = " ".join(f"t{i}" for i in range(first, last + 1))
        example.start_position, example.end_position = first, last
    return example


def convert(tokenizer, examples, max_seq_length=12, doc_stride=3, max_query_length=4,
            is_training=True):
    return squad.convert_examples_to_features(examples, tokenizer, max_seq_length, doc_stride,
                                              max_query_length, is_training)


# ----------------------------------------------------------------------------
# Reading and alignment
# ----------------------------------------------------------------------------

def test_whitespace_words_and_char_offsets():
    # Tab, double space, U+202F separate words; the no-break space U+00A0 does not (as in BERT).
    words, offsets = squad.split_whitespace_words(" a\t b\u202fc\u00a0d  ")
    assert words == ["a", "b", "c\u00a0d"]
    assert offsets == [-1, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2]


def test_read_training_examples_align_answers_to_words(caplog):
    with caplog.at_level(logging.WARNING, logger="bert"):
        examples = squad.read_squad_examples(V1, is_training=True, version_2_with_negative=False)
    by_id = {e.qas_id: e for e in examples}
    brazil = by_id["brazil-mayor"].doc_tokens
    assert brazil == ["S\u00e3o", "Paulo", "is", "the", "largest", "city", "of", "Brazil.", "Its",
                      "area", "is", "1,521\u00a0km\u00b2", "and", "its", "mayor", "is",
                      "Zo\u00eb", "M\u00fcller."]
    spans = {qid: (e.start_position, e.end_position, e.orig_answer_text)
             for qid, e in by_id.items()}
    assert spans["brazil-city"] == (0, 1, "S\u00e3o Paulo")
    assert spans["brazil-mayor"] == (16, 17, "Zo\u00eb M\u00fcller")
    assert spans["eiffel-where"] == (9, 10, "Paris, France")   # the first of two answers
    assert spans["whale-largest"] == (1, 2, "blue whale")
    # Unrecoverable: U+00A0 keeps "1,521\u00a0km²" one word, the answer's own split gives two.
    assert "brazil-area" not in by_id
    assert "1 training questions skipped" in caplog.text and "brazil-area" in caplog.text


def test_evaluation_reading_keeps_every_question():
    examples = squad.read_squad_examples(V1, is_training=False, version_2_with_negative=False)
    assert [e.qas_id for e in examples] == ["eiffel-where", "eiffel-when", "brazil-city",
                                            "brazil-area", "brazil-mayor", "whale-largest"]
    assert all(e.start_position is None for e in examples)
    # Questions of one paragraph share one word list (converted once).
    assert examples[2].doc_tokens is examples[3].doc_tokens


def test_unanswerable_questions_without_v2_warn_and_are_skipped_for_training(caplog):
    with caplog.at_level(logging.WARNING, logger="bert"):
        examples = squad.read_squad_examples(V2, is_training=True, version_2_with_negative=False)
    assert [e.qas_id for e in examples] == ["whale-largest"]
    assert "2 questions are marked is_impossible" in caplog.text
    assert "skipped for training" in caplog.text and "whale-smallest" in caplog.text


def test_unanswerable_questions_with_v2():
    examples = squad.read_squad_examples(V2, is_training=True, version_2_with_negative=True)
    impossible = {e.qas_id: (e.start_position, e.end_position, e.orig_answer_text)
                  for e in examples if e.is_impossible}
    assert impossible == {"whale-smallest": (-1, -1, ""), "whale-color": (-1, -1, "")}


def test_example_from_text():
    example = squad.example_from_text("Who?", "  Ada\tLovelace  wrote  it. ", qas_id="x")
    assert (example.qas_id, example.doc_tokens) == ("x", ["Ada", "Lovelace", "wrote", "it."])
    with pytest.raises(ValueError, match="context is empty"):
        squad.example_from_text("Who?", " \n ")
    with pytest.raises(ValueError, match="question is empty"):
        squad.example_from_text("", "text")


def _mutated(mutate):
    def write(path):
        data = json.loads(V1.read_text(encoding="utf-8"))
        mutate(data)
        path.write_text(json.dumps(data), encoding="utf-8")
    return write


def _paragraph(data, article=0, paragraph=0):
    return data["data"][article]["paragraphs"][paragraph]


def _question(data, article=0, paragraph=0, index=0):
    return _paragraph(data, article, paragraph)["qas"][index]


MALFORMED = {
    "bad JSON": (lambda path: path.write_text('{"data": [', encoding="utf-8"),
                 ["not valid JSON", "line 1"]),
    "no data": (_mutated(lambda d: d.pop("data")), ["'data' list of articles", "version"]),
    "no articles": (_mutated(lambda d: d.update(data=[])), [": no questions"]),
    "no paragraphs": (_mutated(lambda d: d["data"][1].pop("paragraphs")),
                      ["article 1 ('Whale')", "missing 'paragraphs'"]),
    "no qas": (_mutated(lambda d: _paragraph(d, 0, 1).pop("qas")),
               ["article 0 ('Eiffel_Tower'), paragraph 1", "missing 'qas'"]),
    "no context": (_mutated(lambda d: _paragraph(d, 1).pop("context")),
                   ["article 1 ('Whale'), paragraph 0", "missing 'context'"]),
    "no question": (_mutated(lambda d: _question(d, 0, 1, 2).pop("question")),
                    ["paragraph 1, question 'brazil-mayor'", "missing 'question'"]),
    "no id": (_mutated(lambda d: _question(d, 0, 0, 1).pop("id")),
              ["paragraph 0, question 1", "missing 'id'"]),
    "duplicate id": (_mutated(lambda d: _question(d, 1).update(id="eiffel-when")),
                     ["article 1 ('Whale'), paragraph 0", "duplicate question id 'eiffel-when'",
                      "first seen in", "article 0 ('Eiffel_Tower'), paragraph 0"]),
    "answer_start off": (
        _mutated(lambda d: _question(d, 0, 0, 1)["answers"][0].update(answer_start=3)),
        ["question 'eiffel-when', answer 0", "answer_start 3", "'1889'", "reads ' Eif'"]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_files_name_the_place(case, tmp_path):
    write, fragments = MALFORMED[case]
    path = tmp_path / "broken.json"
    write(path)
    with pytest.raises(squad.SquadFormatError) as error:
        squad.read_squad_examples(path, is_training=False, version_2_with_negative=False)
    for fragment in [str(path)] + fragments:
        assert fragment in str(error.value)


def test_training_question_without_answer_is_an_error(tmp_path):
    path = tmp_path / "no-answer.json"
    _mutated(lambda d: _question(d, 1).update(answers=[]))(path)
    assert squad.read_squad_examples(path, is_training=False, version_2_with_negative=False)
    with pytest.raises(squad.SquadFormatError, match="question 'whale-largest': training needs"):
        squad.read_squad_examples(path, is_training=True, version_2_with_negative=False)


# ----------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------

def test_window_layout_padding_and_ids(word_tokenizer):
    (feature,) = convert(word_tokenizer, [numbered_example(5)], is_training=False)
    assert feature.tokens == ["[CLS]", "q", "[SEP]", "t0", "t1", "t2", "t3", "t4", "[SEP]"]
    assert feature.input_ids[:9] == word_tokenizer.convert_tokens_to_ids(feature.tokens)
    assert feature.input_ids[9:] == [0, 0, 0]
    assert feature.input_mask == [1] * 9 + [0] * 3
    assert feature.segment_ids == [0] * 3 + [1] * 6 + [0] * 3
    assert feature.token_to_orig_map == {3: 0, 4: 1, 5: 2, 6: 3, 7: 4}
    assert all(feature.token_is_max_context.values())
    assert (feature.unique_id, feature.example_index, feature.doc_span_index) == (1000000000, 0, 0)
    assert feature.start_position is None


def test_windows_slide_by_stride_and_ids_count_up(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(20), numbered_example(4)],
                       is_training=False)
    # max_tokens_for_doc = 12 - len(["q"]) - 3 = 8
    starts = [f.token_to_orig_map[3] for f in features]
    assert starts == [0, 3, 6, 9, 12, 0]
    ends = [f.token_to_orig_map[max(f.token_to_orig_map)] for f in features]
    assert ends == [7, 10, 13, 16, 19, 3]
    assert [f.unique_id for f in features] == list(range(1000000000, 1000000006))
    assert [f.example_index for f in features] == [0, 0, 0, 0, 0, 1]
    assert [f.doc_span_index for f in features] == [0, 1, 2, 3, 4, 0]


def test_stride_longer_than_a_window_does_not_skip_tokens(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(20)], doc_stride=100, is_training=False)
    assert [sorted(f.token_to_orig_map.values()) for f in features] == [
        list(range(8)), list(range(8, 16)), list(range(16, 20))]


def test_question_truncated_to_max_query_length(word_tokenizer):
    example = squad.example_from_text("q q q q q q q", "t0 t1")
    (feature,) = convert(word_tokenizer, [example], is_training=False)
    assert feature.tokens == ["[CLS]"] + ["q"] * 4 + ["[SEP]", "t0", "t1", "[SEP]"]


def test_answer_cut_by_a_window_targets_cls_there(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(20, answer=(6, 8))])
    # windows cover words 0-7, 3-10, 6-13, 9-16, 12-19; the doc starts at position 3
    assert [(f.start_position, f.end_position) for f in features] == [
        (0, 0), (6, 8), (3, 5), (0, 0), (0, 0)]
    for feature in features[1:3]:
        assert feature.tokens[feature.start_position:feature.end_position + 1] == ["t6", "t7", "t8"]


def test_unanswerable_question_targets_cls_in_every_window(word_tokenizer):
    example = numbered_example(20)
    example.is_impossible, example.start_position, example.end_position = True, -1, -1
    features = convert(word_tokenizer, [example])
    assert {(f.start_position, f.end_position) for f in features} == {(0, 0)}


def max_context_windows(features, word):
    """Indices of the windows in which `word` is at its max context."""
    return [i for i, f in enumerate(features) for position, orig in f.token_to_orig_map.items()
            if orig == word and f.token_is_max_context[position]]


def test_max_context_picks_the_window_with_most_context(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(20)], is_training=False)
    # t6: windows 0-7 (min(6, 1)), 3-10 (min(3, 4)), 6-13 (min(0, 7)) -> the middle one
    assert max_context_windows(features, 6) == [1]
    assert all(len(max_context_windows(features, word)) == 1 for word in range(20))


def test_max_context_ties_go_to_the_earlier_window(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(11)], is_training=False)
    # windows 0-7 and 3-10: t5 has min(5, 2) = min(2, 5) in both; t6 prefers the second
    assert max_context_windows(features, 5) == [0]
    assert max_context_windows(features, 6) == [1]


def test_max_context_prefers_the_longer_window_on_equal_sides(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(11)], doc_stride=5, is_training=False)
    # windows 0-7 (length 8) and 5-10 (length 6): t6 has min(6, 1) = min(1, 4) = 1
    assert max_context_windows(features, 6) == [0]
    assert max_context_windows(features, 7) == [1]


def test_answer_span_tightened_to_sub_tokens(eiffel_tokenizer):
    context = "It was built (1887-1889) in Paris."
    example = squad.example_from_text("Where?", context)
    example.orig_answer_text = "1889"
    example.start_position = example.end_position = 3     # the word "(1887-1889)"
    (feature,) = convert(eiffel_tokenizer, [example], max_seq_length=32, max_query_length=8)
    assert feature.tokens[feature.start_position:feature.end_position + 1] == ["1889"]


def test_unicode_answers_land_on_their_tokens(fixture_tokenizer):
    examples = squad.read_squad_examples(V1, is_training=True, version_2_with_negative=False)
    features = convert(fixture_tokenizer, examples, max_seq_length=256, max_query_length=64)
    assert len(features) == len(examples)
    spans = {examples[f.example_index].qas_id:
             squad._detokenize(f.tokens[f.start_position:f.end_position + 1]) for f in features}
    assert spans["brazil-city"] == "sao paulo"
    assert spans["brazil-mayor"] == "zoe muller"
    assert spans["eiffel-where"] == "paris , france"


def test_a_doc_stride_or_query_length_below_one_is_refused(word_tokenizer):
    with pytest.raises(ValueError, match="--doc_stride must be at least 1, got 0"):
        convert(word_tokenizer, [numbered_example(3)], doc_stride=0)
    # A negative length would cut pieces off the question's end ([:-3]).
    with pytest.raises(ValueError, match="--max_query_length must be at least 1, got -3"):
        convert(word_tokenizer, [numbered_example(3)], max_query_length=-3)


def test_features_to_tensors(word_tokenizer):
    features = convert(word_tokenizer, [numbered_example(20, answer=(6, 8))])
    tensors = squad.features_to_tensors(features, is_training=True)
    assert list(tensors) == ["input_ids", "token_type_ids", "attention_mask",
                             "start_positions", "end_positions", "feature_index"]
    assert all(t.dtype == torch.long for t in tensors.values())
    assert tensors["input_ids"].shape == (5, 12)
    columns = {"input_ids": "input_ids", "token_type_ids": "segment_ids",
               "attention_mask": "input_mask", "start_positions": "start_position",
               "end_positions": "end_position"}
    for name, field in columns.items():
        assert tensors[name].tolist() == [getattr(f, field) for f in features], name
    assert tensors["start_positions"].tolist() == [0, 6, 3, 0, 0]
    assert tensors["end_positions"].tolist() == [0, 8, 5, 0, 0]
    assert tensors["feature_index"].tolist() == [0, 1, 2, 3, 4]
    evaluation = convert(word_tokenizer, [numbered_example(20)], is_training=False)
    assert "start_positions" not in squad.features_to_tensors(evaluation, is_training=False)
    with pytest.raises(ValueError, match="is_training=True"):
        squad.features_to_tensors(evaluation, is_training=True)


# ----------------------------------------------------------------------------
# Span decoding
# ----------------------------------------------------------------------------

def decode(tokenizer, context, start_logits, end_logits, *, max_seq_length=40, doc_stride=128,
           version_2=False, threshold=0.0, max_answer_length=30, n_best_size=20,
           null_logits=(-10.0, -10.0)):
    """Answers for one question on `context` with logits given per token text:
    {("paris", 0): 5.0} puts 5 on the first "paris" of the document; the rest get -10.
    null_logits go to [CLS] of each window (one pair per window, or one for all)."""
    example = squad.example_from_text("where ?", context, qas_id="q1")
    features = squad.convert_examples_to_features([example], tokenizer, max_seq_length,
                                                  doc_stride, 8, is_training=False)
    results = []
    for index, feature in enumerate(features):
        nulls = null_logits[index] if isinstance(null_logits[0], tuple) else null_logits
        starts, ends = np.full(max_seq_length, -10.0), np.full(max_seq_length, -10.0)
        starts[0], ends[0] = nulls
        for logits, wanted in ((starts, start_logits), (ends, end_logits)):
            for (text, occurrence), value in wanted.items():
                positions = [p for p in sorted(feature.token_to_orig_map)
                             if feature.tokens[p] == text]
                for p in positions[occurrence:occurrence + 1]:
                    logits[p] = value
        results.append(squad.RawResult(feature.unique_id, starts.tolist(), ends.tolist()))
    predictions, nbest, null_odds = squad.get_answers(
        [example], features, results, n_best_size, max_answer_length, do_lower_case=True,
        version_2_with_negative=version_2, null_score_diff_threshold=threshold)
    return predictions["q1"], nbest["q1"], null_odds.get("q1")


def test_best_span_with_original_casing_and_punctuation(eiffel_tokenizer):
    answer, nbest, odds = decode(eiffel_tokenizer, EIFFEL, {("paris", 0): 5.0, ("the", 0): 1.0},
                                 {("france", 0): 4.0, ("tower", 0): 1.0})
    assert answer == "Paris, France"            # not "paris , france", not "France."
    assert (nbest[0]["start_logit"], nbest[0]["end_logit"]) == (5.0, 4.0)
    assert [e["text"] for e in nbest[:3]] == [
        "Paris, France", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France",
        "The Eiffel Tower"]
    assert sum(e["probability"] for e in nbest) == pytest.approx(1.0)
    probabilities = [e["probability"] for e in nbest]
    assert probabilities == sorted(probabilities, reverse=True)
    assert odds is None


def test_nbest_probabilities_are_a_softmax_of_summed_logits(eiffel_tokenizer):
    starts = {("paris", 0): 5.0, ("the", 0): 2.0, ("eiffel", 0): 1.0}
    ends = {("france", 0): 4.0, ("tower", 0): 3.0, ("lattice", 0): 1.0}
    _, nbest, _ = decode(eiffel_tokenizer, EIFFEL, starts, ends, n_best_size=3)
    # 3 best of 9 pairs from the 3 best starts and ends: 5+4, 2+4, then 2+3 before 1+4 (ties keep
    # the order of the starts)
    assert [e["text"] for e in nbest] == [
        "Paris, France", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France",
        "The Eiffel Tower"]
    scores = np.array([e["start_logit"] + e["end_logit"] for e in nbest])
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert [e["probability"] for e in nbest] == pytest.approx(expected.tolist())


def test_max_answer_length_is_honoured(eiffel_tokenizer):
    starts, ends = {("the", 0): 6.0, ("paris", 0): 3.0}, {("france", 0): 6.0, ("tower", 0): 2.0}
    long_answer, _, _ = decode(eiffel_tokenizer, EIFFEL, starts, ends)
    assert long_answer == "The Eiffel Tower is a wrought-iron lattice tower in Paris, France"
    short_answer, nbest, _ = decode(eiffel_tokenizer, EIFFEL, starts, ends, max_answer_length=3)
    assert short_answer == "Paris, France"      # 3 tokens; (the, france) is 15
    assert all(len(e["text"].split()) <= 3 for e in nbest)


def test_end_before_start_is_rejected(eiffel_tokenizer):
    answer, nbest, _ = decode(eiffel_tokenizer, EIFFEL, {("paris", 0): 8.0},
                              {("eiffel", 0): 8.0, ("france", 0): 1.0})
    assert answer == "Paris, France"
    assert max(e["start_logit"] + e["end_logit"] for e in nbest) == 9.0    # never (paris, eiffel)


def test_windows_need_room_for_each_question_not_for_the_longest_allowed(eiffel_tokenizer):
    short = squad.example_from_text("where is paris ?", EIFFEL, qas_id="short")
    (feature,) = squad.convert_examples_to_features([short], eiffel_tokenizer, 64, 128, 64, False)
    assert feature.tokens[:6] == ["[CLS]", "where", "is", "paris", "?", "[SEP]"]
    long = squad.example_from_text("where is the eiffel tower in paris ?", EIFFEL, qas_id="long")
    with pytest.raises(ValueError, match="question 'long': its 8 word pieces .* no room for the "
                                         "document in a window of --max_seq_length 11: lower "
                                         "--max_query_length to 7 or raise --max_seq_length"):
        squad.convert_examples_to_features([short, long], eiffel_tokenizer, 11, 128, 64, False)
    # A window too short for any question asks for a longer window, not a negative length;
    # inference.py's question is named by its flag.
    inline = squad.example_from_text("where is paris ?", EIFFEL)
    with pytest.raises(ValueError, match=r"^--question: its 4 word pieces .* --max_seq_length "
                                         r"4: raise --max_seq_length to at least 8$"):
        squad.convert_examples_to_features([inline], eiffel_tokenizer, 4, 128, 64, False)


def test_only_max_context_starts_and_document_tokens_count(eiffel_tokenizer):
    # Logits on the question and on [SEP]/padding are never answers.
    example = squad.example_from_text("where is paris ?", EIFFEL, qas_id="q1")
    (feature,) = squad.convert_examples_to_features([example], eiffel_tokenizer, 40, 128, 8, False)
    starts, ends = np.full(40, -10.0), np.full(40, -10.0)
    starts[3] = ends[3] = 50.0                    # "paris" in the question
    starts[39] = ends[39] = 50.0                  # padding
    paris = feature.tokens.index("paris", 6)
    starts[paris], ends[paris] = 1.0, 1.0
    results = [squad.RawResult(feature.unique_id, starts, ends)]
    predictions, _, _ = squad.get_answers([example], [feature], results, 20, 30, True)
    assert predictions == {"q1": "Paris"}


def test_duplicate_texts_appear_once(eiffel_tokenizer):
    # "♥♥" is [UNK]; "[UNK]" and "[UNK] ," both fall back to the whole word "♥♥,".
    answer, nbest, _ = decode(eiffel_tokenizer, "i like ♥♥, paris", {("[UNK]", 0): 5.0},
                              {("[UNK]", 0): 4.0, (",", 0): 3.0})
    texts = [e["text"] for e in nbest]
    assert answer == "♥♥,"
    assert len(texts) == len(set(texts))


def test_get_final_text():
    assert squad.get_final_text("paris", "PARIS!", True) == "PARIS"
    assert squad.get_final_text("eiffel - tower", "(Eiffel-Tower),", True) == "Eiffel-Tower"
    assert squad.get_final_text("ada lovelace", "Ada Lovelace's", True) == "Ada Lovelace"
    assert squad.get_final_text("sao paulo", "S\u00e3o\tPaulo.", True) == "S\u00e3o\tPaulo"
    assert squad.get_final_text("zoe", "Zo\u00eb", True) == "Zo\u00eb"
    assert squad.get_final_text("cafe", "cafe\u0301!", True) == "cafe\u0301"    # combining accent
    assert squad.get_final_text("n 9", "47\u00b0N 9\u00b0E\ufeff", True) == "N 9"   # length differs
    assert squad.get_final_text("km", "1,521\u00a0km\u00b2", True) == "km"      # no-break space
    assert squad.get_final_text("1", "1,521\u00a0km", True) == "1"
    assert squad.get_final_text("Paris", "Paris.", False) == "Paris"
    assert squad.get_final_text("[UNK]", "\u2665\u2665", True) == "\u2665\u2665"   # not found


def test_v2_null_answer_and_threshold(eiffel_tokenizer):
    starts, ends = {("paris", 0): 1.0}, {("france", 0): 1.0}
    answer, nbest, odds = decode(eiffel_tokenizer, EIFFEL, starts, ends, version_2=True,
                                 null_logits=(2.0, 2.0))
    assert odds == pytest.approx(4.0 - 2.0)
    assert answer == ""
    assert nbest[0]["text"] == "" and nbest[1]["text"] == "Paris, France"
    assert sum(e["probability"] for e in nbest) == pytest.approx(1.0)
    answer, _, _ = decode(eiffel_tokenizer, EIFFEL, starts, ends, version_2=True,
                          null_logits=(2.0, 2.0), threshold=2.5)
    assert answer == "Paris, France"


def test_v2_null_score_is_the_minimum_over_windows(eiffel_tokenizer):
    starts, ends = {("paris", 0): 3.0}, {("france", 0): 3.0}
    answer, nbest, odds = decode(eiffel_tokenizer, EIFFEL, starts, ends, version_2=True,
                                 max_seq_length=16, doc_stride=4,
                                 null_logits=((9.0, 9.0), (1.0, 2.0), (9.0, 9.0), (9.0, 9.0)))
    assert odds == pytest.approx(3.0 - 6.0)
    assert answer == "Paris, France"
    null = next(e for e in nbest if e["text"] == "")
    assert (null["start_logit"], null["end_logit"]) == (1.0, 2.0)


def test_v2_without_any_valid_span_answers_null(eiffel_tokenizer):
    # The document's two tokens score below every other position, so none of the top 20
    # starts or ends lies in the document. The null odds compare the null score (-10 + -10)
    # with an empty span of logit 0: finite, so null_odds.json stays valid JSON.
    low = {("paris", 0): -20.0, ("it", 0): -20.0}
    answer, nbest, odds = decode(eiffel_tokenizer, "Paris it", low, low, version_2=True,
                                 n_best_size=1)
    assert (answer, odds, [e["text"] for e in nbest]) == ("", -20.0, [""])


def test_v2_null_odds_do_not_depend_on_the_printed_n_best(eiffel_tokenizer):
    # The null answer (3 + 3) ranks first; "Paris" (2 + 2) is cut from a 1-best list but is
    # still the non-null answer the null score is compared with.
    for n_best_size in (1, 20):
        answer, nbest, odds = decode(eiffel_tokenizer, EIFFEL, {("paris", 0): 2.0},
                                     {("paris", 0): 2.0}, version_2=True, threshold=3.0,
                                     null_logits=(3.0, 3.0), n_best_size=n_best_size)
        assert (answer, odds) == ("Paris", 2.0)
        assert nbest[0]["text"] == ""


def test_span_search_is_wider_than_the_printed_n_best(eiffel_tokenizer):
    # The best start ("france") comes after the best end ("paris"): a search of the top-1
    # start and end finds no span; the top-20 search finds (paris, paris), 5 + 9.
    answer, nbest, _ = decode(eiffel_tokenizer, EIFFEL, {("france", 0): 9.0, ("paris", 0): 5.0},
                              {("paris", 0): 9.0, ("france", 0): 2.0}, n_best_size=1)
    assert answer == "Paris"
    assert [(e["start_logit"], e["end_logit"]) for e in nbest] == [(5.0, 9.0)]


def test_example_without_document_tokens_answers_empty(word_tokenizer):
    example = squad.SquadExample("x", "q", doc_tokens=[])
    features = convert(word_tokenizer, [example], is_training=False)
    predictions, nbest, _ = squad.get_answers([example], features, [], 20, 30, True)
    assert features == [] and predictions == {"x": ""}
    assert nbest["x"] == [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]


def test_missing_result_names_the_feature(word_tokenizer):
    example = numbered_example(3)
    features = convert(word_tokenizer, [example], is_training=False)
    with pytest.raises(KeyError, match="unique_id 1000000000"):
        squad.get_answers([example], features, [], 20, 30, True)


# ----------------------------------------------------------------------------
# Official metrics
# ----------------------------------------------------------------------------

def dataset(*questions, version="1.1"):
    qas = [{"id": qid, "question": "?",
            "answers": [{"text": text, "answer_start": 0} for text in answers]}
           for qid, answers in questions]
    paragraphs = [{"context": "", "qas": qas}]
    return {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}


def test_normalize_answer():
    assert squad.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert squad.normalize_answer("An apple a day") == "apple day"
    assert squad.normalize_answer("theory") == "theory"          # articles only as words


def test_v1_exact_match_and_f1(caplog):
    data = dataset(("q1", ["Eiffel Tower", "the tower"]), ("q2", ["Eiffel Tower"]),
                   ("q3", ["1889"]))
    predictions = {"q1": "the Eiffel Tower!", "q2": "Tower in Paris"}
    with caplog.at_level(logging.WARNING, logger="bert"):
        metrics = squad.evaluate(data, predictions)
    # q1 exact; q2 overlap "tower": P 1/3, R 1/2, F1 0.4; q3 unanswered scores 0
    assert metrics == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(140 / 3)}
    assert "1 of 3 questions have no prediction" in caplog.text and "q3" in caplog.text


def test_v1_refuses_questions_without_answers():
    with pytest.raises(ValueError, match="Score it with --version_2_with_negative"):
        squad.evaluate(dataset(("q1", [])), {"q1": ""})


def test_v1_f1_of_an_article_only_answer_is_zero():
    # normalisation empties both texts: exact match, but F1 0, as in evaluate-v1.1.py
    metrics = squad.evaluate(dataset(("q1", ["the"])), {"q1": "a"})
    assert metrics == {"exact_match": 100.0, "f1": 0.0}


V2_DATA = dataset(("h1", ["Paris"]), ("h2", ["blue whale"]), ("n1", []), ("n2", []), version="v2.0")
V2_PREDICTIONS = {"h1": "Paris", "h2": "whale", "n1": "", "n2": "France"}
V2_ODDS = {"h1": -3.0, "h2": -2.0, "n1": 2.0, "n2": -1.0}


def test_v2_metrics_and_best_thresholds():
    metrics = squad.evaluate(V2_DATA, V2_PREDICTIONS, null_odds=V2_ODDS, version_2=True)
    # raw exact 1, 0, 1, 0; F1 1, 2/3 (P 1, R 1/2), 1, 0. Only n1's odds exceed 1.0 (no change).
    expected = {
        "exact": 50.0, "f1": 100 * (1 + 2 / 3 + 1) / 4, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": 100 * (1 + 2 / 3) / 2, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
        # all-null start: 2 correct. Admit h1 (-3): 3; h2 (-2): exact 3, F1 3 2/3; n2 (-1): -1
        "best_exact": 75.0, "best_exact_thresh": -3.0,
        "best_f1": 100 * (3 + 2 / 3) / 4, "best_f1_thresh": -2.0,
    }
    assert list(metrics) == list(expected)
    assert metrics == pytest.approx(expected)


def test_v2_na_prob_threshold_turns_answers_into_null():
    metrics = squad.evaluate(V2_DATA, V2_PREDICTIONS, null_odds=V2_ODDS, version_2=True,
                             na_prob_thresh=-1.5)
    # n2 (-1.0) now predicted null: correct; h1, h2 stay
    assert metrics["NoAns_exact"] == 100.0 and metrics["HasAns_exact"] == 50.0


def test_v2_unanswered_questions_score_zero():
    predictions = {qid: text for qid, text in V2_PREDICTIONS.items() if qid != "n1"}
    odds = {qid: value for qid, value in V2_ODDS.items() if qid != "n1"}
    metrics = squad.evaluate(V2_DATA, predictions, null_odds=odds, version_2=True)
    assert (metrics["exact"], metrics["total"], metrics["NoAns_exact"]) == (25.0, 4, 0.0)
    # all-null start: only n2 counts (1). Admit h1: 2; h2: 2; n2 ("France"): 1
    assert (metrics["best_exact"], metrics["best_exact_thresh"]) == (50.0, -3.0)


def test_v2_without_null_odds_has_no_best_thresholds():
    metrics = squad.evaluate(V2_DATA, V2_PREDICTIONS, version_2=True)
    assert list(metrics) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                             "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert metrics["exact"] == 50.0


def test_load_squad_json_and_evaluate_a_fixture():
    data = squad.load_squad_json(V1)
    predictions = {"eiffel-where": "Paris", "eiffel-when": "in 1889",
                   "brazil-city": "São Paulo", "brazil-area": "1,521 km²",
                   "brazil-mayor": "Zoë", "whale-largest": "blue whale"}
    metrics = squad.evaluate(data, predictions)
    # all exact but "in 1889" (F1 2/3) and "Zoë" vs "Zoë Müller" (F1 2/3)
    assert metrics == pytest.approx({"exact_match": 400 / 6, "f1": 100 * (4 + 4 / 3) / 6})


# ----------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev_article(tmp_path_factory):
    if not DEV.is_file():
        pytest.skip(f"real SQuAD absent: {DEV} does not exist")
    data = json.loads(DEV.read_text(encoding="utf-8"))
    data["data"] = data["data"][:1]
    path = tmp_path_factory.mktemp("dev") / "dev-first-article.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    folder = minilm_dir()
    if folder is not None:
        tokenizer = FullTokenizer(folder / "vocab.txt", do_lower_case=True)
    else:
        text = " ".join(p["context"] + " " + " ".join(q["question"] for q in p["qas"])
                        for p in data["data"][0]["paragraphs"])
        tokenizer = FullTokenizer(write_vocab(path.parent / "vocab.txt", text))
    return path, tokenizer


def _holds(pieces, wanted):
    return any(pieces[i:i + len(wanted)] == wanted for i in range(len(pieces) - len(wanted) + 1))


def test_dev_answers_align_with_their_tokens(dev_article):
    """Every answer inside a window is spelled by the tokens at start..end, except where the
    answer is only part of a WordPiece ("wards" of "backwards", "8" of "20-18"): there the
    span is the whole words, which hold the answer's characters but not its pieces."""
    path, tokenizer = dev_article
    examples = squad.read_squad_examples(path, is_training=True, version_2_with_negative=False)
    features = squad.convert_examples_to_features(examples, tokenizer, 384, 128, 64, True)
    inside = [f for f in features if f.start_position > 0]
    assert len(inside) >= len(examples) > 500
    exact = 0
    for feature in inside:
        answer_pieces = tokenizer.tokenize(examples[feature.example_index].orig_answer_text)
        pieces = feature.tokens[feature.start_position:feature.end_position + 1]
        if pieces == answer_pieces:
            exact += 1
            continue
        answer, span = squad._detokenize(answer_pieces), squad._detokenize(pieces)
        assert not _holds(pieces, answer_pieces), (answer, span)
        assert answer.replace(" ", "") in span.replace(" ", ""), (answer, span)
    assert exact / len(inside) > 0.95
