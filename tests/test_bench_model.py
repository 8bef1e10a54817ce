"""bench/bench_model.py's model-FLOP count: the work the task needs, padding left out."""

import sys

import torch

from conftest import REPO
from model import BertConfig

sys.path.insert(0, str(REPO / "bench"))
import bench_model  # noqa: E402


def test_step_flops_count_real_tokens_not_padding():
    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=16)
    attention_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    labels = torch.full((2, 8), -1)
    labels[0, 1] = labels[1, 2] = labels[1, 3] = 7  # 3 masked tokens
    batch = {"input_ids": attention_mask * 5, "attention_mask": attention_mask,
             "masked_lm_labels": labels}
    tokens, squares = 3 + 5, 3**2 + 5**2
    encoder = 2 * tokens * 2 * (4 * 8**2 + 2 * 8 * 16)
    attention = 4 * 2 * 8 * squares
    heads = 2 * 3 * (8**2 + 8 * 100) + 2 * 2 * (8**2 + 2 * 8)
    assert bench_model.step_flops(config, batch) == 3 * (encoder + attention + heads)
