"""SQuAD for BERT: read the JSON, cut questions and contexts into model windows, turn
start/end logits back into answer text, and score answers as the official scripts do.

run_squad.py (training and prediction) and inference.py (one question) both use this
module; neither re-implements any of it.

    examples = read_squad_examples("dev-v1.1.json", is_training=False,
                                   version_2_with_negative=False)
    features = convert_examples_to_features(examples, tokenizer, max_seq_length=384,
                                            doc_stride=128, max_query_length=64, is_training=False)
    tensors = features_to_tensors(features, is_training=False)   # model inputs + feature_index
    ... results.append(RawResult(feature.unique_id, start_logits, end_logits)) ...
    predictions, nbest, null_odds = get_answers(examples, features, results, n_best_size=20,
                                                max_answer_length=30, do_lower_case=True)
    metrics = evaluate(load_squad_json("dev-v1.1.json"), predictions)   # {"exact_match", "f1"}

Deliberate deviations from Google's and NVIDIA's run_squad.py:
- The reader checks the file and raises SquadFormatError naming the file, article, paragraph
  and question (bad JSON, missing keys, duplicate ids, an answer_start that does not point
  at its text); the original fails later with a bare KeyError, or not at all.
- A training question with several answers uses the first one (the original refuses it), so
  a dev file can serve as a small training set. Questions marked is_impossible without
  version_2_with_negative are skipped for training with a warning (the original stops at
  their empty answer list).
- A binary or non-UTF-8 file is an error naming it and the line of the first bad byte (the original
  fails with a bare UnicodeDecodeError).
- Each distinct context word is WordPiece-tokenized once per conversion, not once per
  question; the features are identical.
- The max-context window of every token is found in one pass over the windows
  (_max_context_windows), not by scoring every window for every token: linear instead of
  quadratic in the number of windows, with the same winners.
- get_final_text aligns the prediction with the original words character by character
  after BasicTokenizer's normalisation, so accents, combining marks and control characters
  no longer force the fall-back to the whole original words.
- An example with no valid span is answered "" (the original answers "empty"). In SQuAD 2.0
  the null answer uses the current question's null logits (the original reads a stale
  variable), and a question with no valid non-null span is answered "" with the null score
  as its null odds (as if against an empty span of logit 0; the original crashes).
- Spans are searched among the top max(n_best_size, 20) start and end positions, so
  inference.py's --n_best_size 1 finds the answer that run_squad.py's 20 finds (NVIDIA's
  inference.py searches only the single best start and end, often no valid span at all),
  and SQuAD 2.0 compares the null score with the best span over all candidates, not only
  those in the printed n-best.
- Evaluation runs in-process, as evaluate-v1.1.py and evaluate-v2.0.py compute it. A question
  without a prediction scores 0 in both versions (evaluate-v2.0.py leaves it out of `total`,
  or fails on a HasAns/NoAns subset).
"""

import collections
import functools
import json
import logging
import math
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

import utils
from tokenization import BasicTokenizer

logger = logging.getLogger("bert")

FIRST_UNIQUE_ID = 1000000000
# Fewest top start and end positions searched for spans, whatever the n-best size printed.
MIN_SPAN_SEARCH = 20
_MAX_IDS_SHOWN = 10


class SquadFormatError(ValueError):
    """A SQuAD file that does not have the expected shape; the message says where."""


# ----------------------------------------------------------------------------
# Reading examples
# ----------------------------------------------------------------------------

@dataclass
class SquadExample:
    """One question on one context. `doc_tokens` are the context's whitespace-separated
    words; start/end_position are word indices of the answer (training only; -1 for an
    unanswerable SQuAD 2.0 question, None when not training)."""
    qas_id: str
    question_text: str
    doc_tokens: list
    orig_answer_text: str | None = None
    start_position: int | None = None
    end_position: int | None = None
    is_impossible: bool = False


def _is_whitespace(char):
    """BERT's word separators for contexts; other Unicode spaces (such as U+00A0) stay
    inside words, so the features match the original's."""
    return char in " \t\r\n" or ord(char) == 0x202F


def split_whitespace_words(text):
    """Words of `text` and, for every character, the index of the word it belongs to
    (whitespace belongs to the word before it; -1 before the first word)."""
    words = []
    char_to_word_offset = []
    after_space = True
    for char in text:
        if _is_whitespace(char):
            after_space = True
        elif after_space:
            words.append(char)
            after_space = False
        else:
            words[-1] += char
        char_to_word_offset.append(len(words) - 1)
    return words, char_to_word_offset


INLINE_QUESTION_ID = "--question"  # the id of inference.py's one question


def example_from_text(question, context, qas_id=INLINE_QUESTION_ID):
    """A SquadExample for one free-text question and context (no answer), as inference.py
    needs. Raises ValueError when either is empty."""
    if not question.strip():
        raise ValueError("the question is empty: pass the text to ask about the context")
    doc_tokens, _ = split_whitespace_words(context)
    if not doc_tokens:
        raise ValueError("the context is empty: pass the passage the answer is taken from")
    return SquadExample(qas_id=qas_id, question_text=question, doc_tokens=doc_tokens)


def load_squad_json(path, what="SQuAD file"):
    """The parsed SQuAD file at `path` (a dict with a 'data' list of articles).
    Raises SquadFormatError naming the file for bad JSON or a missing 'data' list, and
    ValueError for a binary or non-UTF-8 file."""
    try:
        dataset = json.loads(utils.read_utf8_text(path, what))
    except json.JSONDecodeError as error:
        raise SquadFormatError(f"{path}: not valid JSON (line {error.lineno}, column "
                               f"{error.colno}: {error.msg})") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        found = sorted(dataset) if isinstance(dataset, dict) else type(dataset).__name__
        raise SquadFormatError(f"{path}: expected a JSON object with a 'data' list of articles "
                               f"(SQuAD format), found {found}")
    return dataset


def _required(container, key, expected_type, where):
    """container[key], or SquadFormatError saying where it is missing or mistyped."""
    if not isinstance(container, dict) or key not in container:
        raise SquadFormatError(f"{where}: missing '{key}'")
    value = container[key]
    if not isinstance(value, expected_type) or isinstance(value, bool):
        raise SquadFormatError(f"{where}: '{key}' should be a {expected_type.__name__}, "
                               f"found {type(value).__name__}")
    return value


def _article_place(path, article_index, article):
    title = article.get("title") if isinstance(article, dict) else None
    return f"{path}: article {article_index}" + (f" ({title!r})" if title else "")


def _checked_answers(qa, context, where):
    """The question's answers, each checked to be a text found at its answer_start."""
    answers = qa.get("answers", [])
    if not isinstance(answers, list):
        raise SquadFormatError(f"{where}: 'answers' should be a list, "
                               f"found {type(answers).__name__}")
    for number, answer in enumerate(answers):
        answer_where = f"{where}, answer {number}"
        text = _required(answer, "text", str, answer_where)
        start = _required(answer, "answer_start", int, answer_where)
        if not text or context[start:start + len(text)] != text:
            raise SquadFormatError(
                f"{answer_where}: answer_start {start} does not point at the answer text "
                f"{text!r}; the context there reads {context[start:start + len(text)]!r}")
    return answers


class _ReadLog:
    """Ids of the questions the reader set aside, reported once at the end."""

    def __init__(self):
        self.unanswerable = []
        self.unrecoverable = []

    def report(self, path, is_training):
        if self.unanswerable:
            fate = ("skipped for training" if is_training
                    else "given an answer like any other question")
            logger.warning("%s: %d questions are marked is_impossible (SQuAD 2.0) but "
                           "version_2_with_negative is off; they are %s (ids: %s)", path,
                           len(self.unanswerable), fate, _some(self.unanswerable))
        if self.unrecoverable:
            logger.warning("%s: %d training questions skipped: their answer cannot be "
                           "recovered from the whitespace-split context (ids: %s)", path,
                           len(self.unrecoverable), _some(self.unrecoverable))


def _some(ids):
    shown = ", ".join(map(str, ids[:_MAX_IDS_SHOWN]))
    return shown + (f" and {len(ids) - _MAX_IDS_SHOWN} more" if len(ids) > _MAX_IDS_SHOWN else "")


def _answer_word_span(answer, doc_tokens, char_to_word_offset):
    """(start_word, end_word) of an answer, or None when the words at those offsets do not
    contain its text (for example a text with a no-break space BERT keeps inside a word)."""
    start_char = answer["answer_start"]
    start_word = char_to_word_offset[start_char]
    end_word = char_to_word_offset[start_char + len(answer["text"]) - 1]
    words_text = " ".join(doc_tokens[start_word:end_word + 1])
    if words_text.find(" ".join(answer["text"].split())) == -1:
        return None
    return start_word, end_word


def _read_question(qa, paragraph, where, is_training, version_2_with_negative, read_log):
    """The SquadExample of one checked question, or None when training must skip it."""
    context, doc_tokens, char_to_word_offset = paragraph
    qas_id = qa["id"]
    question_text = _required(qa, "question", str, where)
    answers = _checked_answers(qa, context, where)
    is_impossible = bool(qa.get("is_impossible", False))
    example = SquadExample(qas_id, question_text, doc_tokens)
    if is_impossible and not version_2_with_negative:
        read_log.unanswerable.append(qas_id)
        return None if is_training else example
    example.is_impossible = is_impossible
    if not is_training:
        return example
    if is_impossible:
        example.orig_answer_text, example.start_position, example.end_position = "", -1, -1
        return example
    if not answers:
        raise SquadFormatError(f"{where}: training needs an answer but 'answers' is empty (for "
                               "SQuAD 2.0 mark it is_impossible and pass version_2_with_negative)")
    word_span = _answer_word_span(answers[0], doc_tokens, char_to_word_offset)
    if word_span is None:
        read_log.unrecoverable.append(qas_id)
        return None
    example.orig_answer_text = answers[0]["text"]
    example.start_position, example.end_position = word_span
    return example


def _paragraphs(articles, source):
    """(where, paragraph, questions) of every paragraph of a SQuAD data set, in file order:
    `where` names its place in errors; `questions` yields (id, question) pairs, each checked
    to have a string id as it is reached."""
    for article_index, article in enumerate(articles):
        article_where = _article_place(source, article_index, article)
        paragraphs = _required(article, "paragraphs", list, article_where)
        for paragraph_index, paragraph in enumerate(paragraphs):
            where = f"{article_where}, paragraph {paragraph_index}"
            yield where, paragraph, _identified_questions(paragraph, where)


def _identified_questions(paragraph, where):
    for question_index, qa in enumerate(_required(paragraph, "qas", list, where)):
        yield _required(qa, "id", str, f"{where}, question {question_index}"), qa


def read_squad_examples(path, is_training, version_2_with_negative):
    """SquadExamples of every question in the SQuAD file at `path`, in file order.

    Training keeps only questions it can learn from; skipped ones are counted in a warning.
    Raises SquadFormatError naming the place for a malformed file.
    """
    dataset = load_squad_json(path)
    examples = []
    first_seen = {}
    read_log = _ReadLog()
    for where, paragraph, questions in _paragraphs(dataset["data"], path):
        context = _required(paragraph, "context", str, where)
        doc_tokens, char_to_word_offset = split_whitespace_words(context)
        for qas_id, qa in questions:
            if qas_id in first_seen:
                raise SquadFormatError(f"{where}: duplicate question id {qas_id!r} "
                                       f"(first seen in {first_seen[qas_id]})")
            first_seen[qas_id] = where
            example = _read_question(qa, (context, doc_tokens, char_to_word_offset),
                                     f"{where}, question {qas_id!r}", is_training,
                                     version_2_with_negative, read_log)
            if example is not None:
                examples.append(example)
    read_log.report(path, is_training)
    if not examples:
        raise SquadFormatError(f"{path}: no questions" + (
            " that training can use (see the warnings above)" if first_seen else ""))
    return examples


# ----------------------------------------------------------------------------
# Features: [CLS] query [SEP] doc-window [SEP]
# ----------------------------------------------------------------------------

@dataclass
class SquadFeature:
    """One model window of one example. Positions index the window's tokens;
    token_to_orig_map and token_is_max_context cover the document tokens only."""
    unique_id: int
    example_index: int
    doc_span_index: int
    tokens: list
    token_to_orig_map: dict
    token_is_max_context: dict
    input_ids: list
    input_mask: list
    segment_ids: list
    start_position: int | None = None
    end_position: int | None = None


class DocSpan(NamedTuple):
    start: int
    length: int


class _SubTokenizedDoc(NamedTuple):
    tokens: list          # WordPiece tokens of the whole context
    tok_to_orig: list     # word index of each token
    orig_to_tok: list     # first token index of each word


def _sub_tokenize_doc(doc_tokens, pieces_of):
    tokens, tok_to_orig, orig_to_tok = [], [], []
    for word_index, word in enumerate(doc_tokens):
        orig_to_tok.append(len(tokens))
        pieces = pieces_of(word)
        tokens.extend(pieces)
        tok_to_orig.extend([word_index] * len(pieces))
    return _SubTokenizedDoc(tokens, tok_to_orig, orig_to_tok)


def _improve_answer_span(doc_tokens, input_start, input_end, tokenizer, orig_answer_text):
    """Tightest sub-token span inside [input_start, input_end] that spells the answer.

    Answers are marked in characters and projected onto whitespace words, which can hold
    more than the answer: the answer "Lyon" lies in the word "Lyon-based", whose WordPieces
    "lyon - based" hold it exactly. Returns the input span when no sub-span matches.
    """
    answer_text = " ".join(tokenizer.tokenize(orig_answer_text))
    for new_start in range(input_start, input_end + 1):
        for new_end in range(input_end, new_start - 1, -1):
            if " ".join(doc_tokens[new_start:new_end + 1]) == answer_text:
                return new_start, new_end
    return input_start, input_end


def _answer_token_span(example, doc, tokenizer):
    """(start, end) token indices of the training answer, or None when unanswerable."""
    if example.is_impossible:
        return None
    start = doc.orig_to_tok[example.start_position]
    if example.end_position + 1 < len(example.doc_tokens):
        end = doc.orig_to_tok[example.end_position + 1] - 1
    else:
        end = len(doc.tokens) - 1
    return _improve_answer_span(doc.tokens, start, end, tokenizer, example.orig_answer_text)


def _doc_spans(num_tokens, max_tokens_for_doc, doc_stride):
    """Windows over the document, each at most max_tokens_for_doc long, starting
    min(length, doc_stride) after the previous one; the last one reaches the end."""
    spans = []
    start = 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append(DocSpan(start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def _max_context_windows(doc_spans, num_tokens):
    """For every document token, the index of the window that gives it its most context.

    A token in several windows is predicted in the one where it has the most words on
    its shorter side, min(left, right), with a small bonus for longer windows
    (+ 0.01 * length); on a tie the earlier window wins. Near a window's edge the model
    sees only half a sentence, so its predictions there are the least reliable.

    Google's _check_is_max_context scores every window for every token, quadratic in the
    number of windows (a 100,000-word context took a minute); each window here scores
    only its own tokens, in window order, with the same arithmetic, so the winners match.
    """
    best_score = [-math.inf] * num_tokens
    best_window = [-1] * num_tokens
    for span_index, span in enumerate(doc_spans):
        end = span.start + span.length - 1
        bonus = 0.01 * span.length
        for position in range(span.start, end + 1):
            score = min(position - span.start, end - position) + bonus
            if score > best_score[position]:
                best_score[position], best_window[position] = score, span_index
    return best_window


def _window_positions(answer_span, span, doc_offset):
    """Training targets in one window: the shifted answer when it lies wholly inside,
    else 0/0 ([CLS]), which is also the target of an unanswerable question."""
    if answer_span is None:
        return 0, 0
    start, end = answer_span
    if start < span.start or end > span.start + span.length - 1:
        return 0, 0
    return start - span.start + doc_offset, end - span.start + doc_offset


def _window_tokens(query_tokens, doc, doc_spans, span_index, max_context_window):
    """Tokens of window `span_index`, and for its document positions the word index and
    whether the window is the token's max context (see _max_context_windows)."""
    span = doc_spans[span_index]
    doc_offset = len(query_tokens) + 2
    doc_positions = range(span.start, span.start + span.length)
    tokens = ["[CLS]", *query_tokens, "[SEP]", *(doc.tokens[p] for p in doc_positions), "[SEP]"]
    token_to_orig_map = {doc_offset + i: doc.tok_to_orig[p] for i, p in enumerate(doc_positions)}
    token_is_max_context = {doc_offset + i: max_context_window[p] == span_index
                            for i, p in enumerate(doc_positions)}
    return tokens, token_to_orig_map, token_is_max_context


def _padded_inputs(tokens, doc_offset, tokenizer, max_seq_length):
    """input_ids, input_mask and segment_ids (1 from the document on), zero-padded."""
    padding = [0] * (max_seq_length - len(tokens))
    return (tokenizer.convert_tokens_to_ids(tokens) + padding,
            [1] * len(tokens) + padding,
            [0] * doc_offset + [1] * (len(tokens) - doc_offset) + padding)


def _check_window_sizes(doc_stride, max_query_length):
    for flag, value in (("--doc_stride", doc_stride), ("--max_query_length", max_query_length)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")


def _check_room_for_the_document(example, query_tokens, max_seq_length, max_query_length):
    """A window holds [CLS], the question, two [SEP] and at least one document token. Checked
    per question, not as max_query_length + 4 <= max_seq_length: short questions fit windows
    that the longest allowed one would not."""
    needed = len(query_tokens) + 4
    if needed > max_seq_length:
        remedy = (f"lower --max_query_length to {max_seq_length - 4} or raise "
                  f"--max_seq_length" if max_seq_length > 4 else
                  f"raise --max_seq_length to at least {needed}")
        raise ValueError(
            f"{_question_name(example)}: its {len(query_tokens)} word pieces (at most "
            f"--max_query_length {max_query_length}) leave no room for the document in a "
            f"window of --max_seq_length {max_seq_length}: {remedy}")


def _question_name(example):
    return ("--question" if example.qas_id == INLINE_QUESTION_ID
            else f"question {example.qas_id!r}")


def convert_examples_to_features(examples, tokenizer, max_seq_length, doc_stride,
                                 max_query_length, is_training):
    """One SquadFeature per window of each example, in order; unique_id counts up from
    1000000000. Training features carry start/end_position (0/0 when the answer is not
    wholly inside the window or the question is unanswerable)."""
    _check_window_sizes(doc_stride, max_query_length)
    pieces_of = functools.cache(tokenizer.tokenize)      # contexts repeat across questions
    features = []
    for example_index, example in enumerate(examples):
        query_tokens = tokenizer.tokenize(example.question_text)[:max_query_length]
        _check_room_for_the_document(example, query_tokens, max_seq_length, max_query_length)
        doc = _sub_tokenize_doc(example.doc_tokens, pieces_of)
        answer_span = _answer_token_span(example, doc, tokenizer) if is_training else None
        doc_offset = len(query_tokens) + 2
        max_tokens_for_doc = max_seq_length - len(query_tokens) - 3
        doc_spans = _doc_spans(len(doc.tokens), max_tokens_for_doc, doc_stride)
        max_context_window = _max_context_windows(doc_spans, len(doc.tokens))
        for span_index, span in enumerate(doc_spans):
            tokens, token_to_orig_map, token_is_max_context = _window_tokens(
                query_tokens, doc, doc_spans, span_index, max_context_window)
            input_ids, input_mask, segment_ids = _padded_inputs(tokens, doc_offset, tokenizer,
                                                                max_seq_length)
            feature = SquadFeature(FIRST_UNIQUE_ID + len(features), example_index, span_index,
                                   tokens, token_to_orig_map, token_is_max_context,
                                   input_ids, input_mask, segment_ids)
            if is_training:
                feature.start_position, feature.end_position = _window_positions(
                    answer_span, span, doc_offset)
            features.append(feature)
    return features


def features_to_tensors(features, is_training):
    """Model inputs as LongTensors of shape (num_features, max_seq_length), keyed by the
    model's argument names: input_ids, token_type_ids, attention_mask, plus
    start_positions and end_positions when training (shape (num_features,)), and last
    feature_index (position in `features`), to map outputs back after a shuffle."""
    def stacked(values):
        return torch.from_numpy(np.array(values, dtype=np.int64))

    tensors = {"input_ids": stacked([f.input_ids for f in features]),
               "token_type_ids": stacked([f.segment_ids for f in features]),
               "attention_mask": stacked([f.input_mask for f in features])}
    if is_training:
        if any(f.start_position is None for f in features):
            raise ValueError("features_to_tensors(is_training=True) needs features converted "
                             "with is_training=True (they have no answer positions)")
        tensors["start_positions"] = stacked([f.start_position for f in features])
        tensors["end_positions"] = stacked([f.end_position for f in features])
    tensors["feature_index"] = torch.arange(len(features), dtype=torch.long)
    return tensors


# ----------------------------------------------------------------------------
# Answer decoding
# ----------------------------------------------------------------------------

class RawResult(NamedTuple):
    """Model output for one feature: logits over its max_seq_length positions."""
    unique_id: int
    start_logits: Sequence[float]
    end_logits: Sequence[float]


class _Candidate(NamedTuple):
    feature_index: int
    start_index: int
    end_index: int
    start_logit: float
    end_logit: float


@functools.cache
def _basic_tokenizer(do_lower_case):
    return BasicTokenizer(do_lower_case=do_lower_case)


@functools.cache
def _normalized_char(char, do_lower_case):
    """What BasicTokenizer makes of one character, spaces removed ("" for whitespace,
    control characters and, when lower-casing, combining marks)."""
    return "".join(_basic_tokenizer(do_lower_case).tokenize(char))


def get_final_text(pred_text, orig_text, do_lower_case):
    """The part of `orig_text` (original words, with case, accents and punctuation) that
    `pred_text` (detokenized WordPieces, normalised by BasicTokenizer) spells.

    "eiffel - tower" in "(Eiffel-Tower)," gives "Eiffel-Tower". The two texts are aligned
    character by character after BasicTokenizer's normalisation; when `pred_text` is not
    found there (an [UNK] piece, say), the whole `orig_text` is returned, as BERT does.
    """
    tok_text = " ".join(_basic_tokenizer(do_lower_case).tokenize(orig_text))
    found = tok_text.find(pred_text)
    if found == -1 or not pred_text.strip():
        return orig_text
    first = found - tok_text.count(" ", 0, found)
    last = first + len(pred_text.replace(" ", "")) - 1
    normalized, origin = [], []
    for index, char in enumerate(orig_text):
        for normal_char in _normalized_char(char, do_lower_case):
            normalized.append(normal_char)
            origin.append(index)
    if "".join(normalized) != tok_text.replace(" ", ""):
        return orig_text
    end = origin[last] + 1
    while end < len(orig_text) and unicodedata.category(orig_text[end]).startswith("M"):
        end += 1      # combining marks that lower-casing dropped belong to the last letter
    return orig_text[origin[first]:end]


def _best_indices(logits, n_best_size):
    """Indices of the n_best_size largest logits, largest first (ties: lower index first)."""
    return np.argsort(-logits, kind="stable")[:n_best_size].tolist()


def _span_candidates(feature_index, feature, start_logits, end_logits, n_best_size,
                     max_answer_length):
    """Valid (start, end) pairs among the top start and end positions of one feature:
    both in the document, start where this window has max context, end >= start, and
    at most max_answer_length tokens."""
    candidates = []
    doc_positions = feature.token_to_orig_map
    ends = _best_indices(end_logits, n_best_size)
    for start in _best_indices(start_logits, n_best_size):
        if start not in doc_positions or not feature.token_is_max_context.get(start, False):
            continue
        for end in ends:
            if end in doc_positions and start <= end < start + max_answer_length:
                candidates.append(_Candidate(feature_index, start, end,
                                             float(start_logits[start]), float(end_logits[end])))
    return candidates


def _detokenize(pieces):
    text = " ".join(pieces).replace(" ##", "").replace("##", "")
    return " ".join(text.split())


def _candidate_text(example, feature, candidate, do_lower_case):
    orig_start = feature.token_to_orig_map[candidate.start_index]
    orig_end = feature.token_to_orig_map[candidate.end_index]
    pred_text = _detokenize(feature.tokens[candidate.start_index:candidate.end_index + 1])
    orig_text = " ".join(example.doc_tokens[orig_start:orig_end + 1])
    return get_final_text(pred_text, orig_text, do_lower_case)


def _total(candidate):
    return candidate.start_logit + candidate.end_logit


def _softmax(scores):
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(score - top) for score in scores]
    total = sum(exps)
    return [value / total for value in exps]


def _nbest_entries(example, features, candidates, null_candidate, n_best_size, do_lower_case):
    """[(text, start_logit, end_logit)], best first, distinct texts; "" is the null answer."""
    if null_candidate is not None:
        candidates = candidates + [null_candidate]
    candidates = sorted(candidates, key=_total, reverse=True)
    entries, seen = [], set()
    for candidate in candidates:
        if len(entries) >= n_best_size:
            break
        feature = features[candidate.feature_index]
        text = ("" if candidate is null_candidate
                else _candidate_text(example, feature, candidate, do_lower_case))
        if text not in seen:
            seen.add(text)
            entries.append((text, candidate.start_logit, candidate.end_logit))
    if null_candidate is not None and "" not in seen:
        entries.append(("", null_candidate.start_logit, null_candidate.end_logit))
    return entries or [("", 0.0, 0.0)]


def _best_non_null(example, features, candidates, do_lower_case):
    """(text, start_logit, end_logit) of the best span with text, from every candidate (the
    printed n-best may be cut before it); ("", 0.0, 0.0), an empty span, when there is none."""
    for candidate in sorted(candidates, key=_total, reverse=True):
        text = _candidate_text(example, features[candidate.feature_index], candidate,
                               do_lower_case)
        if text:
            return text, candidate.start_logit, candidate.end_logit
    return "", 0.0, 0.0


def _result_of(feature, results_by_id, example):
    try:
        return results_by_id[feature.unique_id]
    except KeyError:
        raise KeyError(f"no RawResult for feature unique_id {feature.unique_id} (question "
                       f"{example.qas_id!r}): run the model on every feature") from None


class _DecodeOptions(NamedTuple):
    n_best_size: int
    max_answer_length: int
    do_lower_case: bool
    version_2_with_negative: bool
    null_score_diff_threshold: float


def _answer_example(example, features, results_by_id, options):
    """(answer text, n-best list, null odds or None) of one example."""
    candidates, null_candidate = [], None
    for feature_index, feature in enumerate(features):
        result = _result_of(feature, results_by_id, example)
        start_logits = np.asarray(result.start_logits, dtype=np.float64)
        end_logits = np.asarray(result.end_logits, dtype=np.float64)
        candidates += _span_candidates(feature_index, feature, start_logits, end_logits,
                                       max(options.n_best_size, MIN_SPAN_SEARCH),
                                       options.max_answer_length)
        if options.version_2_with_negative:
            null = _Candidate(feature_index, 0, 0, float(start_logits[0]), float(end_logits[0]))
            if null_candidate is None or _total(null) < _total(null_candidate):
                null_candidate = null
    entries = _nbest_entries(example, features, candidates, null_candidate,
                             options.n_best_size, options.do_lower_case)
    probabilities = _softmax([start + end for _, start, end in entries])
    nbest = [{"text": text, "probability": probability, "start_logit": start, "end_logit": end}
             for (text, start, end), probability in zip(entries, probabilities)]
    if not options.version_2_with_negative:
        return entries[0][0], nbest, None
    best_non_null = _best_non_null(example, features, candidates, options.do_lower_case)
    null_score = _total(null_candidate) if null_candidate is not None else 0.0  # no window
    null_odds = null_score - best_non_null[1] - best_non_null[2]
    if not best_non_null[0]:
        return "", nbest, null_odds
    if null_odds > options.null_score_diff_threshold:
        return "", nbest, null_odds
    return best_non_null[0], nbest, null_odds


def get_answers(examples, features, results, n_best_size, max_answer_length, do_lower_case,
                version_2_with_negative=False, null_score_diff_threshold=0.0):
    """Answer text for every example from the model's logits on its features.

    Args:
        results: RawResult for every feature (any order).
        null_score_diff_threshold: SQuAD 2.0 answers "" when null score minus best
            non-null score exceeds it.
    Returns:
        predictions {qas_id: text}, nbest {qas_id: [{text, probability, start_logit,
        end_logit}, ...]} best first, and null_odds {qas_id: null minus best non-null
        score} (empty unless version_2_with_negative).
    """
    features_by_example = collections.defaultdict(list)
    for feature in features:
        features_by_example[feature.example_index].append(feature)
    results_by_id = {result.unique_id: result for result in results}
    options = _DecodeOptions(n_best_size, max_answer_length, do_lower_case,
                             version_2_with_negative, null_score_diff_threshold)
    predictions, nbest, null_odds = {}, {}, {}
    for example_index, example in enumerate(examples):
        text, example_nbest, odds = _answer_example(
            example, features_by_example[example_index], results_by_id, options)
        predictions[example.qas_id] = text
        nbest[example.qas_id] = example_nbest
        if version_2_with_negative:
            null_odds[example.qas_id] = odds
    return predictions, nbest, null_odds


# ----------------------------------------------------------------------------
# Official evaluation (evaluate-v1.1.py and evaluate-v2.0.py, in-process)
# ----------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text):
    """Lower case, drop ASCII punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction, ground_truth):
    """Token-overlap F1 of the normalised texts (0 when nothing overlaps), as in v1.1."""
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_v2(prediction, ground_truth):
    """v2.0's F1: when either side is empty after normalisation, 1 if both are, else 0."""
    if not normalize_answer(prediction) or not normalize_answer(ground_truth):
        return float(normalize_answer(prediction) == normalize_answer(ground_truth))
    return f1_score(prediction, ground_truth)


def _questions(dataset_json, source):
    """Every question of the data set, each checked to have an id and a list of answers."""
    articles = dataset_json["data"] if isinstance(dataset_json, dict) else dataset_json
    checked = []
    for where, _, questions in _paragraphs(articles, source):
        for qas_id, qa in questions:
            question_where = f"{where}, question {qas_id!r}"
            for number, answer in enumerate(_required(qa, "answers", list, question_where)):
                _required(answer, "text", str, f"{question_where}, answer {number}")
            checked.append(qa)
    return checked


def check_v1_scorable(dataset_json, source):
    """v1.1 scores a prediction against the question's answers: a SQuAD 2.0 file's
    unanswerable questions have none, and only --version_2_with_negative scores them."""
    _refuse_unanswered(_questions(dataset_json, source), source)


def _refuse_unanswered(questions, source):
    unanswered = [qa["id"] for qa in questions if not qa["answers"]]
    if unanswered:
        raise ValueError(f"{source}: {len(unanswered)} questions have no answers (ids: "
                         f"{_some(unanswered)}): is this a SQuAD 2.0 file? Score it with "
                         "--version_2_with_negative")


def _warn_missing(missing, total):
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0 (ids: %s)",
                       len(missing), total, _some(missing))


def _evaluate_v1(questions, predictions):
    exact = f1 = 0.0
    missing = []
    for qa in questions:
        if qa["id"] not in predictions:
            missing.append(qa["id"])
            continue
        truths = [answer["text"] for answer in qa["answers"]]
        prediction = predictions[qa["id"]]
        exact += max(exact_match_score(prediction, truth) for truth in truths)
        f1 += max(f1_score(prediction, truth) for truth in truths)
    _warn_missing(missing, len(questions))
    return {"exact_match": 100.0 * exact / len(questions), "f1": 100.0 * f1 / len(questions)}


def _raw_scores_v2(questions, predictions):
    """Per-question exact and F1 of the predictions as given (0 where none)."""
    exact, f1 = {}, {}
    for qa in questions:
        qid = qa["id"]
        truths = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        prediction = predictions.get(qid)
        exact[qid] = 0.0 if prediction is None else float(
            max(exact_match_score(prediction, truth) for truth in truths))
        f1[qid] = 0.0 if prediction is None else max(_f1_v2(prediction, truth) for truth in truths)
    return exact, f1


def _apply_no_answer_threshold(scores, na_probs, has_answer, na_prob_thresh):
    """Scores when every question whose null odds exceed the threshold is answered ""."""
    return {qid: float(not has_answer[qid]) if na_probs.get(qid, -math.inf) > na_prob_thresh
            else score for qid, score in scores.items()}


def _subset_metrics(exact, f1, qids):
    return {"exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
            "f1": 100.0 * sum(f1[q] for q in qids) / len(qids), "total": len(qids)}


def _best_threshold(predictions, scores, na_probs, has_answer):
    """Best score over null-odds thresholds: start from answering every question "" and
    admit predictions in order of increasing odds. `na_probs` holds the answered questions
    only (an unanswered one scores 0 throughout). Returns (percent, threshold)."""
    current = sum(1 for qid in predictions if qid in has_answer and not has_answer[qid])
    best, best_thresh = current, 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def _evaluate_v2(questions, predictions, null_odds, na_prob_thresh):
    has_answer = {qa["id"]: bool(qa["answers"]) for qa in questions}
    answered = [qid for qid in has_answer if qid in predictions]
    _warn_missing([qid for qid in has_answer if qid not in predictions], len(questions))
    lacking = [qid for qid in answered if null_odds is not None and qid not in null_odds]
    if lacking:
        raise ValueError(f"null_odds has no value for {len(lacking)} predicted questions "
                         f"(ids: {_some(lacking)})")
    na_probs = {qid: 0.0 if null_odds is None else null_odds[qid] for qid in answered}
    exact_raw, f1_raw = _raw_scores_v2(questions, predictions)
    exact = _apply_no_answer_threshold(exact_raw, na_probs, has_answer, na_prob_thresh)
    f1 = _apply_no_answer_threshold(f1_raw, na_probs, has_answer, na_prob_thresh)
    metrics = _subset_metrics(exact, f1, list(has_answer))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, has in has_answer.items() if has == wanted]
        if qids:
            subset = _subset_metrics(exact, f1, qids)
            metrics.update({f"{prefix}_{key}": value for key, value in subset.items()})
    if null_odds is not None:
        metrics["best_exact"], metrics["best_exact_thresh"] = _best_threshold(
            predictions, exact_raw, na_probs, has_answer)
        metrics["best_f1"], metrics["best_f1_thresh"] = _best_threshold(
            predictions, f1_raw, na_probs, has_answer)
    return metrics


def evaluate(dataset_json, predictions, null_odds=None, version_2=False, na_prob_thresh=1.0,
             source="the data set"):
    """Official SQuAD metrics of `predictions` {qas_id: text} against `dataset_json` (the
    loaded file, see load_squad_json), in percent.

    v1.1: {"exact_match", "f1"}. v2.0: exact, f1, total, HasAns_exact/f1/total,
    NoAns_exact/f1/total and, when null_odds {qas_id: score diff} is given (it plays the
    official --na-prob-file, with --na-prob-thresh na_prob_thresh), best_exact,
    best_exact_thresh, best_f1, best_f1_thresh. `source` names the data set in errors.
    """
    expected_version = "v2.0" if version_2 else "1.1"
    version = dataset_json.get("version") if isinstance(dataset_json, dict) else None
    if version is not None and version != expected_version:
        logger.warning("evaluation expects SQuAD version %s, the dataset says %s",
                       expected_version, version)
    questions = _questions(dataset_json, source)
    if not questions:
        raise ValueError("the dataset has no questions to evaluate")
    if version_2:
        return _evaluate_v2(questions, predictions, null_odds, na_prob_thresh)
    _refuse_unanswered(questions, source)
    return _evaluate_v1(questions, predictions)
