"""GLUE tasks for run_glue.py: TSV readers, feature conversion and metrics.

    processor = get_processor("mrpc")
    examples = processor.get_train_examples("data/glue/MRPC")
    features = convert_examples_to_features(examples, processor.get_labels(), 128,
                                            tokenizer, processor.output_mode)
    results = compute_metrics("mrpc", predicted_ids, label_ids)   # {"acc", "f1", "acc_and_f1"}

Every task keeps the column layout of the files that GLUE's download script writes;
`GlueProcessor` holds where each field is and one reader serves all of them.

Deliberate deviations from NVIDIA's processors/glue.py:
- All nine GLUE tasks plus mnli-mm (NVIDIA has cola, mnli, mrpc and sst-2), and a
  test-file reader per task with the test files' own layouts; test labels are None.
- Files are read as utf-8-sig with no quote processing, so MRPC's byte-order mark and
  unbalanced quotes inside sentences never merge or corrupt rows. Blank lines are skipped.
  A binary or non-UTF-8 file is an error naming the file and line, not a UnicodeDecodeError.
- A missing file, a short row or an unknown label raises an error naming the file, the
  line and what was expected, instead of an IndexError or KeyError deep in a loop. QQP's
  train and dev files are the exception for short rows: GLUE's hold some (questions broken
  across lines), which are skipped with a warning that counts them and names the first
  lines, as Hugging Face's QQP processor skips them. Its test file stays strict: a
  submission needs every row.
- guid is "<set>-<n>" with n the 0-based data row (a skipped QQP row keeps its number), so
  test guids equal GLUE's index column (NVIDIA counts the header line, so its first dev
  example is "dev-1").
- STS-B scores are parsed to float while reading; regression labels are float tensors.
- convert_examples_to_features returns a dict of tensors, not a list of InputFeatures,
  and tokenizes all texts in one batch call (FullTokenizer.tokenize_to_ids).
- Metrics are numpy only (no sklearn/scipy). STS-B's Pearson/Spearman exist (NVIDIA's
  branch calls an undefined function). Results are plain floats.
"""

import csv
import dataclasses
import io
import logging
import os

import numpy as np
import torch

import utils

logger = logging.getLogger(__name__)

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclasses.dataclass
class InputExample:
    """One sentence or sentence pair. label: a label string (classification), a float
    (regression) or None for unlabelled test rows."""
    guid: str
    text_a: str
    text_b: str | None = None
    label: str | float | None = None


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where a file keeps its fields: 0-based column indices; label -1 is the last column
    and None means the file has no labels."""
    text_a: int
    text_b: int | None = None
    label: int | None = None
    header: bool = True

    def min_width(self):
        """Fewest columns a row may have: the label, when last, must follow the texts."""
        texts = [index for index in (self.text_a, self.text_b) if index is not None]
        if self.label == -1:
            return max(texts) + 2
        return max(texts + [self.label if self.label is not None else -1]) + 1


# ----------------------------------------------------------------------------- processors

@dataclasses.dataclass(frozen=True)
class GlueProcessor:
    """Reads one GLUE task's train, dev and test files from a data_dir.

    labels: the class labels in id order (empty for a regression task).
    labelled: layout of train and dev files; test: layout of the test file.
    """
    task_name: str
    labels: tuple
    labelled: Columns
    test: Columns
    dev_file: str = "dev.tsv"
    test_file: str = "test.tsv"
    output_mode: str = CLASSIFICATION
    skips_short_rows: bool = False  # in train and dev files (see the module docstring)

    def get_train_examples(self, data_dir):
        return self._read(data_dir, "train.tsv", "train", self.labelled)

    def get_dev_examples(self, data_dir):
        return self._read(data_dir, self.dev_file, "dev", self.labelled)

    def get_test_examples(self, data_dir):
        return self._read(data_dir, self.test_file, "test", self.test)

    def get_labels(self):
        """Label strings in id order; [] for regression."""
        return list(self.labels)

    @property
    def num_labels(self):
        """Width of the classifier output: 1 for regression."""
        return len(self.labels) if self.output_mode == CLASSIFICATION else 1

    def _read(self, data_dir, file_name, set_type, columns):
        path = os.path.join(data_dir, file_name)
        if not os.path.isfile(path):
            expected = ", ".join(["train.tsv", self.dev_file, self.test_file])
            raise FileNotFoundError(
                f"{path} does not exist: task {self.task_name!r} expects {expected} in "
                f"{data_dir} (the GLUE layout written by download_glue_data.py)")
        examples, short_rows = [], []
        skips_short_rows = self.skips_short_rows and columns.label is not None
        for data_row, (line_number, row) in enumerate(_read_tsv(path, columns.header)):
            if len(row) < columns.min_width():
                if not skips_short_rows:
                    raise ValueError(
                        f"{path}, line {line_number}: {len(row)} tab-separated columns, task "
                        f"{self.task_name!r} needs at least {columns.min_width()} in this file")
                short_rows.append(line_number)
                continue
            examples.append(InputExample(
                guid=f"{set_type}-{data_row}",
                text_a=row[columns.text_a],
                text_b=row[columns.text_b] if columns.text_b is not None else None,
                label=self._parse_label(row, columns, path, line_number)))
        if short_rows:
            logger.warning("%s: skipped %d rows with fewer than %d tab-separated columns "
                           "(lines %s%s)", path, len(short_rows), columns.min_width(),
                           ", ".join(map(str, short_rows[:5])),
                           ", ..." if len(short_rows) > 5 else "")
        if not examples:
            raise ValueError(f"{path}: no examples (the file has no data rows)")
        return examples

    def _parse_label(self, row, columns, path, line_number):
        if columns.label is None:
            return None
        label = row[columns.label]
        if self.output_mode == REGRESSION:
            try:
                return float(label)
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: score {label!r} is not a number "
                                 f"(task {self.task_name!r} is a regression task)") from None
        if label not in self.labels:
            raise ValueError(f"{path}, line {line_number}: unknown label {label!r}; task "
                             f"{self.task_name!r} allows {list(self.labels)}")
        return label


def _read_tsv(path, skip_header):
    """Yields (1-based line number, fields) for each non-blank data row of `path`."""
    text = utils.read_utf8_text(path, "GLUE file")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    for index, row in enumerate(reader):
        if (index == 0 and skip_header) or not row:
            continue
        yield reader.line_num, row


_BINARY = ("0", "1")
_NLI = ("contradiction", "entailment", "neutral")
_ENTAILMENT = ("entailment", "not_entailment")

PROCESSORS = {
    processor.task_name: processor for processor in [
        GlueProcessor("cola", _BINARY, Columns(3, label=1, header=False), Columns(1)),
        GlueProcessor("mnli", _NLI, Columns(8, 9, label=-1), Columns(8, 9),
                      dev_file="dev_matched.tsv", test_file="test_matched.tsv"),
        GlueProcessor("mnli-mm", _NLI, Columns(8, 9, label=-1), Columns(8, 9),
                      dev_file="dev_mismatched.tsv", test_file="test_mismatched.tsv"),
        GlueProcessor("mrpc", _BINARY, Columns(3, 4, label=0), Columns(3, 4)),
        GlueProcessor("qnli", _ENTAILMENT, Columns(1, 2, label=-1), Columns(1, 2)),
        GlueProcessor("qqp", _BINARY, Columns(3, 4, label=5), Columns(1, 2),
                      skips_short_rows=True),
        GlueProcessor("rte", _ENTAILMENT, Columns(1, 2, label=-1), Columns(1, 2)),
        GlueProcessor("sst-2", _BINARY, Columns(0, label=1), Columns(1)),
        GlueProcessor("sts-b", (), Columns(7, 8, label=-1), Columns(7, 8),
                      output_mode=REGRESSION),
        GlueProcessor("wnli", _BINARY, Columns(1, 2, label=-1), Columns(1, 2)),
    ]
}


def get_processor(task_name):
    """The processor of `task_name` (case-insensitive); ValueError listing the known tasks."""
    try:
        return PROCESSORS[task_name.lower()]
    except KeyError:
        raise ValueError(f"unknown GLUE task {task_name!r}; known tasks: "
                         f"{', '.join(PROCESSORS)}") from None


# ----------------------------------------------------------------------------- features

def truncate_seq_pair(length_a, length_b, max_num_tokens):
    """Lengths after BERT's pair truncation: drop the last token of the longer sequence
    (of B on a tie) until both fit in max_num_tokens.

    Computed in closed form: the shorter side is only cut once the two are level, after
    which they shrink alternately, leaving A the larger half of an odd budget (as Google's
    and NVIDIA's loops do; Hugging Face's "longest_first" gives that token to B).
    """
    if length_a + length_b <= max_num_tokens:
        return length_a, length_b
    shorter = min(length_a, length_b)
    if 2 * shorter <= max_num_tokens:
        longer = max_num_tokens - shorter
        return (longer, shorter) if length_a > length_b else (shorter, longer)
    return (max_num_tokens + 1) // 2, max_num_tokens // 2


def convert_examples_to_features(examples, label_list, max_seq_length, tokenizer, output_mode):
    """Token ids of `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, zero-padded.

    Args:
        examples: InputExamples, all single sentences, all pairs, or a mix.
        label_list: labels in id order (ignored for regression).
        max_seq_length: sequence length after padding; longer inputs are truncated.
        tokenizer: a FullTokenizer (uses tokenize_to_ids and vocab).
        output_mode: "classification" or "regression".
    Returns:
        dict of input_ids, token_type_ids, attention_mask ([N, max_seq_length] long) and
        labels ([N]; long ids with -1 where absent, or float with nan where absent).
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for [CLS] text [SEP]")
    cls_id, sep_id = _special_ids(tokenizer, "[CLS]", "[SEP]")
    ids_a = tokenizer.tokenize_to_ids([example.text_a for example in examples])
    pair_rows = [row for row, example in enumerate(examples) if example.text_b is not None]
    ids_b = dict(zip(pair_rows, tokenizer.tokenize_to_ids([examples[row].text_b
                                                           for row in pair_rows])))

    input_ids = np.zeros((len(examples), max_seq_length), dtype=np.int64)
    token_type_ids = np.zeros_like(input_ids)
    attention_mask = np.zeros_like(input_ids)
    for row, tokens_a in enumerate(ids_a):
        tokens_b = ids_b.get(row)
        if tokens_b is None:
            sequence = [cls_id, *tokens_a[:max_seq_length - 2], sep_id]
            length_b = 0
        else:
            length_a, length_b = truncate_seq_pair(len(tokens_a), len(tokens_b),
                                                   max_seq_length - 3)
            sequence = [cls_id, *tokens_a[:length_a], sep_id, *tokens_b[:length_b], sep_id]
            length_b += 1
        input_ids[row, :len(sequence)] = sequence
        attention_mask[row, :len(sequence)] = 1
        token_type_ids[row, len(sequence) - length_b:len(sequence)] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": _label_tensor(examples, label_list, output_mode),
    }


def _special_ids(tokenizer, *tokens):
    missing = [token for token in tokens if token not in tokenizer.vocab]
    if missing:
        raise ValueError(f"the vocab has no {', '.join(missing)}: a BERT vocab is required")
    return [tokenizer.vocab[token] for token in tokens]


def _label_tensor(examples, label_list, output_mode):
    if output_mode == REGRESSION:
        values = [float("nan") if e.label is None else float(e.label) for e in examples]
        return torch.tensor(values, dtype=torch.float32)
    if output_mode != CLASSIFICATION:
        raise ValueError(f"output_mode {output_mode!r}: expected {CLASSIFICATION!r} or "
                         f"{REGRESSION!r}")
    label_map = {label: index for index, label in enumerate(label_list)}
    ids = []
    for example in examples:
        if example.label is not None and example.label not in label_map:
            raise ValueError(f"example {example.guid}: label {example.label!r} is not in "
                             f"the label list {list(label_list)}")
        ids.append(-1 if example.label is None else label_map[example.label])
    return torch.tensor(ids, dtype=torch.long)


# ----------------------------------------------------------------------------- metrics

def accuracy(predictions, labels):
    return float(np.mean(predictions == labels))


def f1_score(predictions, labels, positive=1):
    """F1 of the positive class; 0 when there are no positives in either array."""
    true_positives = np.sum((predictions == positive) & (labels == positive))
    errors = np.sum((predictions == positive) != (labels == positive))
    return float(2 * true_positives / (2 * true_positives + errors)) if true_positives else 0.0


def matthews_corrcoef(predictions, labels):
    """Matthews correlation (multi-class form, binary included); 0 when undefined, i.e.
    when either array holds a single class."""
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true, predicted = np.split(encoded, 2)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (true, predicted), 1)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    total, correct = confusion.sum(), np.trace(confusion)
    covariance = correct * total - true_counts @ predicted_counts
    scale = ((total ** 2 - predicted_counts @ predicted_counts)
             * (total ** 2 - true_counts @ true_counts))
    return float(covariance / np.sqrt(scale)) if scale > 0 else 0.0


def pearson(x, y):
    """Pearson correlation; nan when either array is constant."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    scale = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / scale) if scale > 0 else float("nan")


def average_ranks(values):
    """1-based ranks of `values`; tied values share the mean of the ranks they span."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts_run = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    run_starts = np.flatnonzero(starts_run)
    run_ends = np.append(run_starts[1:], len(values))
    run_ranks = (run_starts + run_ends + 1) / 2
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = run_ranks[np.cumsum(starts_run) - 1]
    return ranks


def spearman(x, y):
    """Spearman correlation: Pearson of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


_ACCURACY_TASKS = ("sst-2", "mnli", "mnli-mm", "qnli", "rte", "wnli")


def compute_metrics(task_name, predictions, labels):
    """GLUE's metrics for `task_name`: predicted class ids (or scores for sts-b) against the
    gold ones. Returns floats under acc (all but cola and sts-b), f1 and acc_and_f1 (mrpc,
    qqp), mcc (cola), pearson, spearmanr and corr (sts-b)."""
    task_name = get_processor(task_name).task_name
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or len(labels) == 0:
        raise ValueError(f"{task_name}: predictions {predictions.shape} and labels "
                         f"{labels.shape} must be equal-length, non-empty 1-D arrays")
    if task_name == "sts-b":
        if np.isnan(labels).any():
            raise ValueError("sts-b: some labels are nan (unlabelled test rows have no metrics)")
        correlations = {"pearson": pearson(predictions, labels),
                        "spearmanr": spearman(predictions, labels)}
        return {**correlations, "corr": (correlations["pearson"] + correlations["spearmanr"]) / 2}
    if (labels < 0).any():
        raise ValueError(f"{task_name}: some labels are -1 (unlabelled test rows have no metrics)")
    if task_name == "cola":
        return {"mcc": matthews_corrcoef(predictions, labels)}
    if task_name in _ACCURACY_TASKS:
        return {"acc": accuracy(predictions, labels)}
    acc, f1 = accuracy(predictions, labels), f1_score(predictions, labels)
    return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
