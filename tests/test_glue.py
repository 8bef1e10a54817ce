"""Specification of glue.py: every task's reader on fixtures in GLUE's real layouts,
feature conversion with exact ids on a hand-written vocab, metrics against hand-computed
values, and the error messages.

The real-data test skips without ../shared/data/glue/MRPC.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import glue
from conftest import SHARED_DATA
from glue import (InputExample, compute_metrics, convert_examples_to_features,
                  get_processor, truncate_seq_pair)
from tokenization import FullTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "glue"

# task -> (fixture folder, {set: (number of examples, (text_a, text_b, label) of the first)})
EXPECTED = {
    "cola": ("CoLA", {
        "train": (3, ("The lamp stood on the table.", None, "1")),
        "dev": (2, ("Him saw the dog me.", None, "0")),
        "test": (2, ("Birds sing in the morning.", None, None))}),
    "sst-2": ("SST-2", {
        "train": (3, ("a warm and funny film ", None, "1")),
        "dev": (2, ("never once boring ", None, "1")),
        "test": (2, ("an uneven but likable comedy .", None, None))}),
    "mrpc": ("MRPC", {
        "train": (3, ("The council approved the budget on Monday.",
                      "On Monday the council passed the budget.", "1")),
        "dev": (2, ("Rain is expected tomorrow.", "The game was cancelled.", "0")),
        "test": (1, ("The bridge reopened today.", "Traffic is moving on the bridge again.",
                     None))}),
    "mnli": ("MNLI", {
        "train": (3, ("A man is reading a book.", "A person reads.", "entailment")),
        "dev": (1, ("The law passed in 1990.", "The law is new.", "contradiction")),
        "test": (1, ("The door was open.", "Someone left the door open.", None))}),
    "mnli-mm": ("MNLI", {
        "train": (3, ("A man is reading a book.", "A person reads.", "entailment")),
        "dev": (2, ("Thank you for your gift.", "A gift was received.", "entailment")),
        "test": (1, ("Wool keeps sheep warm.", "Sheep have wool.", None))}),
    "qnli": ("QNLI", {
        "train": (2, ("When does the library open?", "The library opens at eight every morning.",
                      "entailment")),
        "dev": (1, ("What is the capital?", "The capital is a port city.", "not_entailment")),
        "test": (1, ("How tall is the tower?", "The tower is 300 metres tall.", None))}),
    "qqp": ("QQP", {
        "train": (2, ("How do I learn to swim?", "What is the best way to learn swimming?", "1")),
        "dev": (1, ("Is tea healthy?", "Is green tea good for you?", "1")),
        "test": (1, ("How do clouds form?", "What makes clouds?", None))}),
    "rte": ("RTE", {
        "train": (2, ("The company hired forty workers last year.", "The company hired workers.",
                      "entailment")),
        "dev": (1, ("Paris hosted the meeting.", "The meeting was in Paris.", "entailment")),
        "test": (1, ("The team won the final.", "The team lost.", None))}),
    "sts-b": ("STS-B", {
        "train": (2, ("A dog runs in the park.", "A dog is running in a park.", 4.8)),
        "dev": (1, ("The answer is yes.", "Yes, that is right.", 3.25)),
        "test": (1, ("Rain falls on the city.", "It is raining in town.", None))}),
    "wnli": ("WNLI", {
        "train": (2, ("The cup fell off the shelf because it was loose.", "The shelf was loose.",
                      "0")),
        "dev": (1, ("The box did not fit in the car because it was too big.",
                    "The box was too big.", "1")),
        "test": (1, ("The fish ate the worm. It was hungry.", "The worm was hungry.", None))}),
}


def read(task_name, set_type, data_dir=None):
    processor = get_processor(task_name)
    data_dir = data_dir or FIXTURES / EXPECTED[task_name][0]
    return getattr(processor, f"get_{set_type}_examples")(data_dir)


# ----------------------------------------------------------------------------- readers

def test_every_glue_task_has_a_processor():
    assert sorted(glue.PROCESSORS) == sorted(EXPECTED)
    assert get_processor("MRPC") is get_processor("mrpc")


@pytest.mark.parametrize("set_type", ["train", "dev", "test"])
@pytest.mark.parametrize("task_name", sorted(EXPECTED))
def test_reader_takes_the_right_columns(task_name, set_type):
    count, first = EXPECTED[task_name][1][set_type]
    examples = read(task_name, set_type)
    assert len(examples) == count
    assert (examples[0].text_a, examples[0].text_b, examples[0].label) == first
    assert [e.guid for e in examples] == [f"{set_type}-{n}" for n in range(count)]
    if set_type == "test":
        assert all(e.label is None for e in examples)
    else:
        labels = get_processor(task_name).get_labels()
        assert all(e.label in labels or isinstance(e.label, float) for e in examples)


def test_labels_and_output_modes():
    assert get_processor("mnli").get_labels() == ["contradiction", "entailment", "neutral"]
    assert get_processor("rte").get_labels() == ["entailment", "not_entailment"]
    assert get_processor("cola").get_labels() == ["0", "1"]
    assert get_processor("sts-b").get_labels() == []
    assert get_processor("sts-b").output_mode == "regression"
    assert get_processor("sts-b").num_labels == 1
    assert get_processor("mnli-mm").num_labels == 3
    assert {get_processor(t).output_mode for t in EXPECTED if t != "sts-b"} == {"classification"}


def test_cola_train_has_no_header_and_keeps_every_row():
    assert [e.label for e in read("cola", "train")] == ["1", "0", "1"]


def test_mrpc_byte_order_mark_and_stray_quote():
    assert (FIXTURES / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    examples = read("mrpc", "train")
    # An unbalanced quote opens no quoted field, so the next row stays its own example.
    assert examples[1].text_a == '"The plan is dead, the mayor said.'
    assert examples[2].text_a == "Shares rose 5 percent."
    assert [e.label for e in examples] == ["1", "0", "1"]


def test_mnli_label_is_the_last_column_of_train_and_dev():
    assert [e.label for e in read("mnli", "train")] == ["entailment", "contradiction", "neutral"]
    assert [e.label for e in read("mnli-mm", "dev")] == ["entailment", "neutral"]


# ----------------------------------------------------------------------------- reader errors

def test_missing_file_names_it_and_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        read("mnli-mm", "dev", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "dev_mismatched.tsv") in message
    assert "'mnli-mm'" in message
    assert "train.tsv, dev_mismatched.tsv, test_mismatched.tsv" in message


def test_short_row_names_file_and_line(tmp_path):
    (tmp_path / "train.tsv").write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1\t2\tA cat.\tA cat sat.\n"
        "0\t3\t4\tonly three columns then a tab lost\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: 4 tab-separated columns, "
                                         r"task 'mrpc' needs at least 5"):
        read("mrpc", "train", tmp_path)


def test_qqps_short_rows_are_skipped_with_a_count(tmp_path, caplog):
    """GLUE's QQP files break some questions across lines; those rows are skipped, counted
    and named, and the rows around them are read whole."""
    (tmp_path / "train.tsv").write_text(
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "0\t1\t2\tHow do I swim?\tHow can I learn to swim?\t1\n"
        "1\t3\t4\tWhat is a question broken\n"
        "across lines?\tIs it?\t0\n"
        "2\t5\t6\tIs tea healthy?\tIs coffee healthy?\t0\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="glue"):
        examples = read("qqp", "train", tmp_path)
    assert [(e.guid, e.text_a, e.label) for e in examples] == [
        ("train-0", "How do I swim?", "1"), ("train-3", "Is tea healthy?", "0")]
    assert "skipped 2 rows with fewer than 6 tab-separated columns (lines 3, 4)" in caplog.text


def test_qqps_test_file_refuses_short_rows(tmp_path):
    """A submission needs a prediction for every test row: none may be skipped."""
    (tmp_path / "test.tsv").write_text("id\tquestion1\tquestion2\n0\tA broken\n",
                                       encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.tsv, line 2: 2 tab-separated columns"):
        read("qqp", "test", tmp_path)


def test_unknown_label_names_file_line_label_and_allowed_labels(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nodd\tpositive\n")
    with pytest.raises(ValueError, match=r"dev\.tsv, line 3: unknown label 'positive'; "
                                         r"task 'sst-2' allows \['0', '1'\]"):
        read("sst-2", "dev", tmp_path)


def test_a_file_with_a_header_only_is_refused_by_name(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n\n")
    with pytest.raises(ValueError, match=r"dev\.tsv: no examples \(the file has no data rows\)"):
        read("sst-2", "dev", tmp_path)


def test_sts_b_score_must_be_a_number(tmp_path):
    row = "0\tg\tf\t2012\t1\tnone\tnone\tA.\tB.\tabout four\n"
    (tmp_path / "train.tsv").write_text("header\n" + row)
    with pytest.raises(ValueError, match=r"line 2: score 'about four' is not a number"):
        read("sts-b", "train", tmp_path)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'mnli-m'; known tasks: cola, mnli, "
                                         r"mnli-mm, mrpc, qnli, qqp, rte, sst-2, sts-b, wnli"):
        get_processor("mnli-m")


# ----------------------------------------------------------------------------- features

HAND_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",       # 0-4
              "the", "cat", "sat", "on", "mat",                      # 5-9
              "a", "dog", "ran", ".", "##s"]                         # 10-14
CLS, SEP = 2, 3

fast_modes = [False, pytest.param(True, marks=pytest.mark.skipif(
    importlib.util.find_spec("tokenizers") is None, reason="needs `pip install tokenizers`"))]


@pytest.fixture(params=fast_modes, ids=["pure", "fast"])
def tokenizer(request, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(HAND_VOCAB) + "\n", encoding="utf-8")
    return FullTokenizer(vocab, do_lower_case=True, use_fast=request.param)


def convert(tokenizer, pairs, max_seq_length, labels=None, output_mode="classification"):
    labels = labels or [None] * len(pairs)
    examples = [InputExample(f"dev-{i}", a, b, label)
                for i, ((a, b), label) in enumerate(zip(pairs, labels))]
    return convert_examples_to_features(examples, ["0", "1"], max_seq_length, tokenizer,
                                        output_mode)


def test_pair_ids_token_types_and_padding(tokenizer):
    features = convert(tokenizer, [("The cats sat.", "A zebra ran.")], 14, labels=["1"])
    # [CLS] the cat ##s sat . [SEP] a [UNK] ran . [SEP] [PAD] [PAD]
    assert features["input_ids"].tolist() == [[CLS, 5, 6, 14, 7, 13, SEP, 10, 1, 12, 13, SEP, 0, 0]]
    assert features["token_type_ids"].tolist() == [[0] * 7 + [1] * 5 + [0] * 2]
    assert features["attention_mask"].tolist() == [[1] * 12 + [0] * 2]
    assert features["labels"].tolist() == [1]
    assert all(t.dtype == torch.long for t in features.values())


def test_single_sentence_and_its_truncation(tokenizer):
    features = convert(tokenizer, [("The cat sat on the mat.", None), ("A dog.", None)], 5,
                       labels=["0", None])
    assert features["input_ids"].tolist() == [[CLS, 5, 6, 7, SEP], [CLS, 10, 11, 13, SEP]]
    assert features["token_type_ids"].tolist() == [[0] * 5] * 2
    assert features["attention_mask"].tolist() == [[1] * 5] * 2
    assert features["labels"].tolist() == [0, -1]


@pytest.mark.parametrize("text_a, text_b, max_seq_length, expected", [
    # the longer side loses tokens from its end, whichever side it is
    ("the cat sat on the mat .", "a dog", 8, [CLS, 5, 6, 7, SEP, 10, 11, SEP]),
    ("a dog", "the cat sat on the mat .", 8, [CLS, 10, 11, SEP, 5, 6, 7, SEP]),
    # level sides: B goes first, so A keeps the larger half of an odd budget
    ("the cat sat", "a dog ran", 7, [CLS, 5, 6, SEP, 10, 11, SEP]),
    ("the cat sat", "a dog ran", 8, [CLS, 5, 6, 7, SEP, 10, 11, SEP]),
])
def test_pair_truncation_pops_from_the_longer_side(tokenizer, text_a, text_b, max_seq_length,
                                                   expected):
    features = convert(tokenizer, [(text_a, text_b)], max_seq_length)
    assert features["input_ids"].tolist() == [expected]
    assert features["token_type_ids"].tolist() == [[0] * (expected.index(SEP) + 1) + [1] * (
        max_seq_length - expected.index(SEP) - 1)]


def test_closed_form_truncation_equals_popping():
    def pop_until_fits(length_a, length_b, max_num_tokens):
        while length_a + length_b > max_num_tokens:
            if length_a > length_b:
                length_a -= 1
            else:
                length_b -= 1
        return length_a, length_b

    for length_a in range(12):
        for length_b in range(12):
            for budget in range(15):
                assert truncate_seq_pair(length_a, length_b, budget) == \
                    pop_until_fits(length_a, length_b, budget), (length_a, length_b, budget)


def test_regression_labels_are_float_with_nan_for_test_rows(tokenizer):
    features = convert(tokenizer, [("a dog", "a cat"), ("the mat", "a mat")], 8,
                       labels=[3.5, None], output_mode="regression")
    assert features["labels"].dtype == torch.float32
    assert features["labels"][0].item() == 3.5 and math.isnan(features["labels"][1].item())


def test_fixture_files_convert_end_to_end(tokenizer):
    processor = get_processor("sst-2")
    examples = processor.get_train_examples(FIXTURES / "SST-2")
    features = convert_examples_to_features(examples, processor.get_labels(), 16, tokenizer,
                                            processor.output_mode)
    assert features["input_ids"].shape == (3, 16)
    assert features["labels"].tolist() == [1, 0, 1]
    test = processor.get_test_examples(FIXTURES / "SST-2")
    assert convert_examples_to_features(test, processor.get_labels(), 16, tokenizer,
                                        "classification")["labels"].tolist() == [-1, -1]


def test_feature_errors(tokenizer):
    with pytest.raises(ValueError, match=r"example dev-0: label '2' is not in the label list "
                                         r"\['0', '1'\]"):
        convert(tokenizer, [("a dog", None)], 8, labels=["2"])
    with pytest.raises(ValueError, match="max_seq_length 2 leaves no room"):
        convert(tokenizer, [("a dog", None)], 2)


# ----------------------------------------------------------------------------- metrics

def test_accuracy_and_f1_by_hand():
    # tp = 2 (rows 0, 1), fp = 1 (row 2), fn = 1 (row 3), tn = 1 (row 4)
    predictions = [1, 1, 1, 0, 0]
    labels = [1, 1, 0, 1, 0]
    results = compute_metrics("mrpc", predictions, labels)
    assert results["acc"] == pytest.approx(3 / 5)
    assert results["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert results["acc_and_f1"] == pytest.approx((3 / 5 + 4 / 6) / 2)
    assert compute_metrics("qqp", [0, 0], [0, 0]) == {"acc": 1.0, "f1": 0.0, "acc_and_f1": 0.5}


def test_matthews_correlation_by_hand():
    # tp 3, tn 2, fp 1, fn 1: (3*2 - 1*1) / sqrt(4 * 4 * 3 * 3) = 5/12
    predictions = [1, 1, 1, 1, 0, 0, 0]
    labels = [1, 1, 1, 0, 0, 0, 1]
    assert compute_metrics("cola", predictions, labels) == {"mcc": pytest.approx(5 / 12)}
    assert compute_metrics("cola", labels, labels)["mcc"] == pytest.approx(1.0)
    assert compute_metrics("cola", [1 - x for x in labels], labels)["mcc"] == pytest.approx(-1.0)
    # A constant prediction leaves the correlation undefined: reported as 0.
    assert compute_metrics("cola", [1] * 7, labels)["mcc"] == 0.0
    assert compute_metrics("cola", [1, 0, 1], [1, 1, 1])["mcc"] == 0.0


def test_multiclass_matthews_correlation_by_hand():
    # confusion (rows true): [[2,1,0],[0,1,0],[0,0,1]]; t = (3,1,1), p = (2,2,1), c = 4, s = 5
    # (4*5 - (6+2+1)) / sqrt((25 - 9) * (25 - 11)) = 11 / sqrt(224)
    mcc = glue.matthews_corrcoef(np.array([0, 0, 1, 1, 2]), np.array([0, 0, 0, 1, 2]))
    assert mcc == pytest.approx(11 / math.sqrt(224))


def test_accuracy_tasks():
    for task_name in ["sst-2", "mnli", "mnli-mm", "qnli", "rte", "wnli"]:
        assert compute_metrics(task_name, np.array([2, 0, 1, 1]),
                               torch.tensor([2, 1, 1, 1])) == {"acc": 0.75}


def test_pearson_and_spearman_with_ties_by_hand():
    # Pearson of (1,2,3) and (1,2,4): 3 / sqrt(2 * 42/9) = 9 / sqrt(84)
    assert glue.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert glue.average_ranks([10, 20, 20, 30, 20]).tolist() == [1, 3, 3, 5, 3]
    assert glue.average_ranks([0.5, 0.5, 0.1]).tolist() == [2.5, 2.5, 1]
    # ranks (1, 2.5, 2.5, 4) against (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    results = compute_metrics("sts-b", [1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert results["spearmanr"] == pytest.approx(3 / math.sqrt(10))
    pearson = glue.pearson([1, 2, 2, 3], [1, 3, 2, 4])
    assert results["pearson"] == pytest.approx(pearson)
    assert results["corr"] == pytest.approx((pearson + 3 / math.sqrt(10)) / 2)
    assert math.isnan(glue.pearson([1, 1, 1], [1, 2, 3]))


def test_metrics_refuse_unlabelled_or_mismatched_input():
    with pytest.raises(ValueError, match="labels are -1"):
        compute_metrics("mrpc", [0, 1], [1, -1])
    with pytest.raises(ValueError, match="labels are nan"):
        compute_metrics("sts-b", [0.5, 1.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"predictions \(3,\) and labels \(2,\)"):
        compute_metrics("sst-2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="unknown GLUE task"):
        compute_metrics("squad", [0], [0])


# ----------------------------------------------------------------------------- real data

def test_real_mrpc_counts_and_label_balance():
    data_dir = SHARED_DATA / "glue" / "MRPC"
    if not (data_dir / "train.tsv").is_file():
        pytest.skip(f"real MRPC absent: {data_dir} has no train.tsv")
    processor = get_processor("mrpc")
    for examples, count in [(processor.get_train_examples(data_dir), 3668),
                            (processor.get_dev_examples(data_dir), 408)]:
        assert len(examples) == count
        positive = sum(e.label == "1" for e in examples) / count
        assert 0.64 < positive < 0.71, positive   # GLUE's MRPC is about two-thirds paraphrases
        assert all(e.text_a and e.text_b for e in examples)
    if (data_dir / "test.tsv").is_file():
        assert len(processor.get_test_examples(data_dir)) == 1725
