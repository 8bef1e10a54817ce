"""BERT: configuration, encoder, pre-training and task heads, checkpoint loading and export.

Parameter names and shapes are those of Hugging Face's classes of the same names, so a
state dict moves between the two with `load_state_dict` unchanged. `load_checkpoint`
also reads NVIDIA DeepLearningExamples checkpoints (`dense_act` names, `module.` prefixes,
vocabulary padded to a multiple of 8).

Deliberate deviations from NVIDIA's modeling.py:
- Attention runs through `torch.nn.functional.scaled_dot_product_attention`, in
  (batch, heads, seq, head_dim) layout; no TorchScript/NVFuser. In bf16/fp16 on the CPU,
  attention is matmul-softmax-matmul instead and dropout's mask is a keyed hash of each
  element's position, compiled and never stored (`attention`, `dropout`): 3x and 4-10x
  faster there. fp32 keeps torch's kernels.
- `hidden_act="gelu"` is torch's exact erf GELU (as Google and Hugging Face; NVIDIA's
  spells it with the constant 1.41421 for sqrt(2), about 4e-6 apart).
  "gelu_new"/"gelu_pytorch_tanh" select the tanh approximation.
- `BertForPreTraining` with labels decodes only masked positions (NVIDIA's
  "dense_seq_output", always on) and returns the losses; without labels it returns logits
  over every position. Logits never include the padded vocabulary rows.
- Batches with more than 10% padding run the position-wise layers on the real tokens
  only (outputs at padding are zero), and question answering gives padding positions a
  logit of -10000, so the loss's softmax covers the real tokens only. A batch without
  padding is attended without a mask, which lets SDPA choose its flash kernel.
- Pre-training can be given the unpadding and masked-position indices computed on the host
  before the transfer (`add_batch_indices`), so a training step reads nothing back from the
  GPU; without them the model computes them itself, as NVIDIA's does.
- Position ids are a non-persistent buffer (as in newer transformers): state dicts do not
  hold it, and a traced graph keeps no device, so an export runs on any GPU or the CPU.
- apex's FusedLayerNorm is used only where its compiled extension (fused_layer_norm_cuda)
  is installed; NVIDIA's code took it whenever apex imported, and a Python-only apex build
  then failed when the model was built.
- Loading is strict about the encoder (a missing, unexpected or mis-shaped encoder weight is
  an error, see NVIDIA issues #1151/#1154); task heads may be missing or unexpected and are
  reported by name.
- Checkpoints are read with `torch.load(weights_only=True)` or safetensors only: no pickled code.
"""

import functools
import importlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from tokenization import vocab_txt_bytes
from utils import (CompiledOrEager, atomic_write_text, current_umask, load_tensors,
                   logger)


@functools.cache
def layer_norm_class():
    """apex's FusedLayerNorm where apex is installed with its compiled extension, else
    nn.LayerNorm (same parameter names); decided once per process and logged.

    A Python-only apex build imports fine and fails only when a FusedLayerNorm is constructed
    (it lacks fused_layer_norm_cuda), so the extension itself is what is checked.
    """
    try:
        from apex.normalization import FusedLayerNorm
    except ImportError:
        logger.debug("LayerNorm: torch.nn.LayerNorm (apex is not installed)")
        return nn.LayerNorm
    try:
        importlib.import_module("fused_layer_norm_cuda")
    except ImportError as e:
        logger.warning("LayerNorm: torch.nn.LayerNorm; apex is installed without its compiled "
                       "extension fused_layer_norm_cuda (%s): rebuild apex with --cuda_ext "
                       "for the fused kernel", e)
        return nn.LayerNorm
    logger.info("LayerNorm: apex FusedLayerNorm")
    return FusedLayerNorm


def layer_norm(config):
    return layer_norm_class()(config.hidden_size, eps=config.layer_norm_eps)

ACT2FN = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "swish": F.silu,
    "silu": F.silu,
}


# ----------------------------------------------------------------------------- config

@dataclass
class BertConfig:
    """The fields of BERT's bert_config.json / Hugging Face's config.json.

    `pad_vocab_to_multiple_of` (ours, default 1 = off) rounds the embedding table up for
    tensor cores, as NVIDIA does (30522 -> 30528 with 8); `vocab_size` stays the real size.
    """
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_vocab_to_multiple_of: int = 1

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size",
                    "pad_vocab_to_multiple_of")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not one of "
                             f"{sorted(ACT2FN)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def padded_vocab_size(self):
        multiple = self.pad_vocab_to_multiple_of
        return math.ceil(self.vocab_size / multiple) * multiple

    @classmethod
    def from_dict(cls, values):
        """Builds a config from a dict; keys that are not BERT fields (Hugging Face's
        model_type, architectures, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json_file(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"BERT config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"BERT config file {path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"BERT config file {path} must hold a JSON object")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"BERT config file {path}: {e}") from None

    def to_dict(self):
        return asdict(self)

    def to_json_file(self, path, extra=None):
        """Writes the config (plus `extra` keys) as JSON, atomically."""
        atomic_write_text(path, json.dumps({**self.to_dict(), **(extra or {})}, indent=2) + "\n")


# ----------------------------------------------------------------------------- encoder

def dropout(x, p, training=True):
    """Inverted dropout: F.dropout, but for bf16/fp16 tensors on the CPU, whose keep mask
    is a keyed hash of each element's position (`_hash_dropout`): drawn, applied and, in
    the backward, drawn again in one pass each, and never stored.

    torch's CPU dropout draws one Bernoulli sample per element from its mt19937 generator
    (1.65 ns a 32-bit word on this project's 2-core benchmark machine) and keeps the mask
    for the backward. Forward and backward of the recipe's attention-probability dropout
    (64x4x128x128 bf16, torch 2.13) took 26-34 ms that way, 12 ms with a mask of two 15-bit
    draws per word applied by one addcmul each way, and 3.1 ms as the compiled hash: dropout
    had been 22% of that recipe's step (0.770 s against 0.604 without). fp32 keeps torch's
    dropout, so that fp32 results stay those of torch's own kernels. The two keys of each
    call come from torch's CPU generator, so seeding, exact resume and activation
    checkpointing (which replays the generator) give the same masks.
    """
    if not training or p == 0.0:
        return x
    if (x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float16)
            or x.numel() >= 2**31):  # the hash counts positions in int32
        return F.dropout(x, p, training=True)
    keys = torch.randint(-2**31, 2**31, (2,), dtype=torch.int32)
    return _HashDropout.apply(x, keys, round(p * 2**DROPOUT_BITS))


DROPOUT_BITS = 24  # the rate is p rounded to a multiple of 2**-24 (0.1 -> 0.10000002)
DROPOUT_COMPILE_MIN_ELEMENTS = 2**15  # smaller tensors (tests, tiny models) stay eager


def _hash_dropout(flat, keys, threshold):
    """flat (1-d) with each element kept where the hash of its position is at least
    `threshold` (of 2**DROPOUT_BITS) and scaled by the inverse of the keep rate in fp32,
    else zeroed. The hash: two rounds of xor with a key, multiply by an odd constant and
    xor-shift (int32 arithmetic wraps; `>>` is arithmetic, hence the masks), its top 24
    bits the uniform draw. Elementwise, so inductor compiles it into one vectorised loop;
    eager it gives the same bits."""
    keep_rate = 1.0 - threshold / 2**DROPOUT_BITS
    h = (torch.arange(flat.numel(), dtype=torch.int32, device=flat.device) ^ keys[0]) * _MIX[0]
    h = h ^ ((h >> 16) & 0xFFFF)
    h = (h ^ keys[1]) * _MIX[1]
    h = h ^ ((h >> 15) & 0x1FFFF)
    keep = ((h >> 8) & 0xFFFFFF) >= threshold
    scale = 1.0 / keep_rate if keep_rate > 0 else 0.0
    return torch.where(keep, flat.float() * scale, 0.0).to(flat.dtype)


_MIX = (-2048144789, -1028477387)  # murmur3's 0x85EBCA6B and 0xC2B2AE35 as int32


_HASH_DROPOUT = CompiledOrEager(_hash_dropout, "dropout's CPU mask")


def _apply_hash_dropout(x, keys, threshold):
    flat = x.contiguous().view(-1)
    compile = flat.numel() >= DROPOUT_COMPILE_MIN_ELEMENTS
    return _HASH_DROPOUT(flat, keys, threshold, compile=compile).view(x.shape)


class _HashDropout(torch.autograd.Function):
    """`_hash_dropout` forward, and again on the gradient backward: the same positions
    are kept and scaled, so nothing but the two keys is saved."""

    @staticmethod
    def forward(ctx, x, keys, threshold):
        ctx.save_for_backward(keys)
        ctx.threshold = threshold
        return _apply_hash_dropout(x, keys, threshold)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        keys, = ctx.saved_tensors
        return _apply_hash_dropout(grad, keys, ctx.threshold), None, None


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (the faster mask on the CPU)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def attention(q, k, v, bias=None, dropout_prob=0.0):
    """softmax(q k^T / sqrt(head_dim) + bias) v over (batch, heads, seq, head_dim), with
    dropout on the probabilities.

    scaled_dot_product_attention, but for bf16/fp16 on the CPU: there the plain
    matmul-softmax-matmul measured 3x faster on this project's benchmark machine (torch
    2.13, 2 cores, 64x4x128x64 bf16, forward and backward: SDPA's flash kernel 88 ms, this
    29 ms), and its dropout is `dropout`'s. Scores and probabilities then stay in the input
    dtype, as in Hugging Face's eager attention under autocast.
    """
    explicit = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_prob)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    return dropout(scores.softmax(-1), dropout_prob) @ v


def to_cpu_autocast_dtype(hidden_states):
    """The embeddings' output (fp32, from fp32 tables) cast once to the dtype of an active
    CPU autocast, before their dropout (which is then the fast bf16 one).

    CPU autocast keeps LayerNorm in its input's dtype, so the residual stream then stays
    in bf16; from fp32 embeddings it stays in fp32 instead, and every projection casts the
    same activations again (the query, key and value each their own copy; forward and
    backward, about 5% of a bf16 step). CUDA autocast runs LayerNorm in fp32 either way.
    """
    if hidden_states.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return hidden_states.to(torch.get_autocast_dtype("cpu"))
    return hidden_states


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = layer_norm(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        # A buffer, not torch.arange(..., device=...): a traced graph would keep that device
        # as a constant, while a buffer moves with the module. Not persistent, so state
        # dicts (and their parity with Hugging Face's) do not change.
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None],
                             persistent=False)

    def forward(self, input_ids, token_type_ids, sparse_word_table=None):
        """sparse_word_table: the word table as `tied_word_tables` gives it to the lookup,
        which then returns its gradient as a sparse tensor (the looked-up rows only)."""
        seq_len = input_ids.shape[1]
        if not torch.jit.is_tracing() and seq_len > self.position_ids.shape[1]:
            raise ValueError(f"a sequence of {seq_len} tokens is longer than the model's "
                             f"max_position_embeddings ({self.position_ids.shape[1]}): "
                             f"truncate the input (--max_seq_length)")
        words = (F.embedding(input_ids, sparse_word_table, sparse=True)
                 if sparse_word_table is not None else self.word_embeddings(input_ids))
        embeddings = (words
                      + self.position_embeddings(self.position_ids[:, :seq_len])
                      + self.token_type_embeddings(token_type_ids))
        return self.dropout(to_cpu_autocast_dtype(self.LayerNorm(embeddings)))


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def split_heads(self, x):
        batch, seq, hidden = x.shape
        return x.view(batch, seq, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(self, hidden_states, layout):
        q = self.split_heads(layout.unpack(self.query(hidden_states)))  # (B, heads, T, head_dim)
        k = self.split_heads(layout.unpack(self.key(hidden_states)))
        v = self.split_heads(layout.unpack(self.value(hidden_states)))
        bias = layout.attention_bias
        if bias is not None:
            bias = bias.to(q.dtype)  # autocast: q is fp16/bf16
        context = attention(q, k, v, bias, self.dropout_prob if self.training else 0.0)
        batch, _, seq, _ = context.shape
        return layout.pack(context.transpose(1, 2).reshape(batch, seq, -1))  # (B, T, hidden)


class BertSelfOutput(nn.Module):
    """Projection, dropout and the post-LayerNorm residual (also BertOutput's shape)."""

    def __init__(self, config, input_size):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = layer_norm(config)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, hidden_states, layout):
        return self.output(self.self(hidden_states, layout), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states))


class BertOutput(BertSelfOutput):
    def __init__(self, config):
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, layout):
        attention_output = self.attention(hidden_states, layout)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        # Activation checkpointing (run_pretraining.py --checkpoint_activations): backward
        # keeps the inputs of chunks of ceil(sqrt(layers)) layers and recomputes the rest.
        self.checkpoint_activations = False

    def forward(self, hidden_states, layout):
        hidden_states = layout.pack(hidden_states)
        checkpointed = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        chunk = math.ceil(math.sqrt(len(self.layer))) if checkpointed else len(self.layer)
        for start in range(0, len(self.layer), max(chunk, 1)):
            if checkpointed:  # dropout draws the same masks again: the RNG state is replayed
                hidden_states = torch.utils.checkpoint.checkpoint(
                    self._run_layers, start, start + chunk, hidden_states, layout,
                    use_reentrant=False)
            else:
                hidden_states = self._run_layers(start, start + chunk, hidden_states, layout)
        return layout.unpack(hidden_states)

    def _run_layers(self, start, end, hidden_states, layout):
        for layer in self.layer[start:end]:
            hidden_states = layer(hidden_states, layout)
        return hidden_states


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output):
        return torch.tanh(self.dense(sequence_output[:, 0]))


def attention_bias_from_mask(attention_mask):
    """(B, T) 1/0 padding mask -> additive fp32 (B, 1, 1, T) bias for SDPA.

    -10000 (BERT's constant) rather than -inf or a boolean mask: a row whose keys are all
    padding gets a uniform softmax instead of NaN, and the value survives a cast to
    fp16/bf16 where finfo(float32).min would become -inf.
    """
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].bool()
    # Built from the mask, not torch.zeros(..., device=...): a traced graph keeps no device.
    return torch.zeros_like(keep, dtype=torch.float32).masked_fill(~keep, -10000.0)


def unpadding_indices(attention_mask):
    """(B, T) 1/0 padding mask -> (token_index, padded).

    token_index: the flat positions of the real tokens when they are fewer than
    `TokenLayout.PACK_BELOW` of the batch (the model then runs on them only), else None.
    padded: whether any position is padding (without padding attention takes no mask).
    Reading them is a host sync for a mask on a GPU; `add_batch_indices` does it on the
    CPU batch before the transfer.
    """
    keep = attention_mask.reshape(-1).bool()
    real = keep.nonzero().squeeze(1)
    token_index = real if real.numel() < TokenLayout.PACK_BELOW * keep.numel() else None
    return token_index, real.numel() < keep.numel()


def masked_lm_indices(masked_lm_labels):
    """The flat positions whose label is >= 0: the masked tokens that the loss reads."""
    return (masked_lm_labels.reshape(-1) >= 0).nonzero().squeeze(1)


def add_batch_indices(batch, pin_memory=False):
    """A pre-training batch, still on the CPU, plus what the model would otherwise read back
    from the GPU every micro-batch (a host sync each time): 'padded' (a Python bool),
    'token_index' when the batch is packed (see unpadding_indices) and 'masked_lm_index'.
    BertForPreTraining takes them as keyword arguments. With pin_memory every tensor is put
    in pinned memory, so that `.to(device, non_blocking=True)` does not wait for the GPU."""
    if batch["attention_mask"].device.type != "cpu":
        raise ValueError(f"add_batch_indices takes the batch before its transfer to the "
                         f"device; its attention_mask is on {batch['attention_mask'].device}")
    token_index, padded = unpadding_indices(batch["attention_mask"])
    indexed = dict(batch, padded=padded,
                   masked_lm_index=masked_lm_indices(batch["masked_lm_labels"]))
    if token_index is not None:
        indexed["token_index"] = token_index
    if pin_memory:
        indexed = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in indexed.items()}
    return indexed


class TokenLayout:
    """Where a batch's real tokens are, and the attention bias for its padding.

    When padding is more than `PACK_BELOW` of the batch, the position-wise layers (the
    projections, feed-forward and LayerNorms: most of the model's work) run on the real
    tokens only, packed as (N, hidden); attention unpacks them to (B, T) for SDPA. Outputs
    at padding positions are then zero (they are meaningless either way). A batch without
    padding gets no attention mask at all, which lets SDPA choose its flash kernel.

    `token_index` and `padded` come from `unpadding_indices`, computed on the host before
    the transfer (add_batch_indices); without them the layout computes them itself, one
    host sync per forward.
    """
    PACK_BELOW = 0.9
    # Set while exporting (triton/export_model.py): the graph must not follow the data, so
    # the batch is never packed and the bias is always applied, with no host sync.
    STATIC = False

    def __init__(self, attention_mask, token_index=None, padded=None):
        self.index = self.attention_bias = None
        if attention_mask is None:
            return
        self.shape = attention_mask.shape
        if self.STATIC:
            self.attention_bias = attention_bias_from_mask(attention_mask)
            return
        if padded is None:
            token_index, padded = unpadding_indices(attention_mask)
        self.index = token_index
        if padded:
            self.attention_bias = attention_bias_from_mask(attention_mask)

    def pack(self, x):
        """(B, T, H) -> (N, H) real tokens; unchanged when not packing."""
        return x if self.index is None else x.reshape(-1, x.shape[-1]).index_select(0, self.index)

    def unpack(self, x):
        """(N, H) -> (B, T, H) with zeros at padding; unchanged when not packing."""
        if self.index is None:
            return x
        padded = x.new_zeros(self.shape.numel(), x.shape[-1]).index_copy(0, self.index, x)
        return padded.view(*self.shape, x.shape[-1])


class BertPreTrainedModel(nn.Module):
    """Weight initialisation shared by every BERT class (normal(0, initializer_range))."""

    def init_weights(self, *modules):
        for module in modules:
            module.apply(self._init_module)

    def _init_module(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, layer_norm_class())):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BertModel(BertPreTrainedModel):
    """Embeddings + encoder (+ pooler). forward -> (sequence_output, pooled_output or None).

    Like Hugging Face, question answering builds it without the pooler, which only the
    next-sentence and classification heads read.
    """

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights(self)
        with torch.no_grad():  # padded vocabulary rows are never looked up
            self.embeddings.word_embeddings.weight[config.vocab_size:].zero_()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, token_index=None,
                padded=None, sparse_word_table=None):
        """token_index and padded: see TokenLayout (optional; computed here when absent).
        sparse_word_table: see BertEmbeddings."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden_states = self.embeddings(input_ids, token_type_ids, sparse_word_table)
        layout = TokenLayout(attention_mask, token_index, padded)
        sequence_output = self.encoder(hidden_states, layout)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return sequence_output, pooled_output


# ----------------------------------------------------------------------------- heads

class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = layer_norm(config)

    def forward(self, hidden_states):
        return self.LayerNorm(self.activation(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    """Transform, then the vocabulary decoder whose weight is the word-embedding table."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))
        self.decoder.bias = self.bias  # one tensor under both of Hugging Face's names

    def forward(self, hidden_states):
        return self.padded_logits(hidden_states)[..., :self.vocab_size]

    def padded_logits(self, hidden_states, decoder_table=None):
        """Logits over the padded (tensor-core friendly) width; columns from vocab_size on
        are padding, which `forward` slices off and `cross_entropy_ignoring_negatives` ignores.
        decoder_table: the word table as `tied_word_tables` gives it to the decoder."""
        weight = self.decoder.weight if decoder_table is None else decoder_table
        return F.linear(self.transform(hidden_states), weight, self.bias)


def tied_word_tables(table):
    """(lookup's table, decoder's table): the tied word table once for each of its two
    uses, for a lookup with a sparse gradient (BertEmbeddings' sparse_word_table) and the
    masked-LM decoder. Autograd then hands both gradients to one backward, which adds the
    lookup's rows into the decoder's dense gradient in place.

    Given the table itself twice, autograd sums the two gradients where they meet, in the
    order they arrive: the decoder's dense one first, and dense plus a later sparse one it
    adds out of place, into a new (vocab, hidden) tensor. For a 6-layer/384 bf16 step on
    this project's 2-core machine that copy took 14 ms, against 2 for each of the table's
    casts to and from bf16."""
    return _TiedWordTables.apply(table)


class _TiedWordTables(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table):
        ctx.set_materialize_grads(False)
        return table.view_as(table), table.view_as(table)

    @staticmethod
    def backward(ctx, lookup_grad, decoder_grad):
        if lookup_grad is None or decoder_grad is None:
            return decoder_grad if lookup_grad is None else lookup_grad
        # The decoder's gradient is this backward's own (made by the decoder's backward or
        # autocast's cast back to fp32, and read by nothing else).
        return decoder_grad.add_(lookup_grad)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config, word_embeddings):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def cross_entropy_ignoring_negatives(logits, labels, classes=None):
    """Mean cross-entropy over entries whose label is >= 0, so both -1 (NVIDIA) and -100
    (Hugging Face) mark ignored entries; 0 rather than NaN when nothing is labelled.
    classes: only the first `classes` columns of the logits are classes (the rest is the
    vocabulary's padding); all of them by default."""
    labels = labels.reshape(-1)
    logits = logits.reshape(labels.shape[0], -1)
    classes = classes or logits.shape[1]
    targets = labels.clamp(min=0)
    if logits.dtype in (torch.bfloat16, torch.float16):
        losses = _LowPrecisionCrossEntropy.apply(logits, targets, classes)
    else:
        losses = F.cross_entropy(logits[:, :classes], targets, reduction="none")
    counted = labels >= 0
    return (losses * counted).sum() / counted.sum().clamp(min=1)


def _row_losses(logits, targets, classes):
    """(per-row cross-entropy over the first `classes` columns, the rows' log-normalisers),
    in fp32 from low-precision logits."""
    real = logits[:, :classes].float()
    row_max = real.amax(dim=1, keepdim=True)
    log_normaliser = (row_max + (real - row_max).exp().sum(dim=1, keepdim=True).log()).squeeze(1)
    return log_normaliser - real.gather(1, targets[:, None]).squeeze(1), log_normaliser


def _row_losses_backward(logits, targets, log_normaliser, grad_losses, classes):
    """d loss_r / d z_rc = (softmax_rc - [c == target_r]) times the row's incoming
    gradient, in fp32, rounded once to the logits' dtype; 0 in the padding columns."""
    column = torch.arange(logits.shape[1], device=logits.device)
    softmax = (logits.float() - log_normaliser[:, None]).exp()
    grad = (softmax - (column == targets[:, None]).float()) * grad_losses[:, None]
    return torch.where(column < classes, grad, 0.0).to(logits.dtype)


_ROW_LOSSES = CompiledOrEager(_row_losses, "the masked-LM loss")
_ROW_LOSSES_BACKWARD = CompiledOrEager(_row_losses_backward, "the masked-LM loss's backward")
CROSS_ENTROPY_COMPILE_MIN_ELEMENTS = 2**20  # CPU logits from this size up: compiled


class _LowPrecisionCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of bf16/fp16 logits over their first `classes` columns,
    computed in fp32 without keeping an fp32 copy: on the CPU each direction is one
    inductor-compiled pass over the logits (the backward recomputes the softmax from them
    and the saved log-normalisers).

    F.cross_entropy(logits.float()) of the masked-LM head copies (masked tokens x vocabulary)
    to fp32 and runs log-softmax and its backward over the copy: on the CPU it was 15% of a
    bf16 pre-training step (4-layer/256, batch 64). Eager bf16 passes with the exponentials
    kept for the backward then took 78-80 ms forward and backward at the recipe's 1161 x
    30522 (the 2-core benchmark machine, the malloc setting on), these compiled passes 43-52.
    Elsewhere (small logits, accelerators) the same functions run eagerly.
    """

    @staticmethod
    def forward(ctx, logits, targets, classes):
        compile = (logits.device.type == "cpu"
                   and logits.numel() >= CROSS_ENTROPY_COMPILE_MIN_ELEMENTS)
        losses, log_normaliser = _ROW_LOSSES(logits, targets, classes, compile=compile)
        ctx.save_for_backward(logits, targets, log_normaliser)
        ctx.classes, ctx.compile = classes, compile
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        logits, targets, log_normaliser = ctx.saved_tensors
        grad = _ROW_LOSSES_BACKWARD(logits, targets, log_normaliser, grad_losses.float(),
                                    ctx.classes, compile=ctx.compile)
        return grad, None, None


class BertForPreTraining(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        # Not the decoder: its weight is the (already initialised) embedding table.
        self.init_weights(self.cls.predictions.transform, self.cls.seq_relationship)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                masked_lm_labels=None, next_sentence_labels=None, token_index=None,
                masked_lm_index=None, padded=None):
        """Without labels: (prediction_scores (B, T, vocab), seq_relationship_scores (B, 2)).
        With masked_lm_labels (token id where masked, negative elsewhere):
        (total_loss, masked_lm_loss, next_sentence_loss), the NSP term only when
        next_sentence_labels is given (else next_sentence_loss is None).
        token_index, masked_lm_index and padded are what add_batch_indices computes on the
        host; when absent they are computed here (a host sync each on a GPU)."""
        # With the losses the decoder's dense gradient of the tied table is certain, and on
        # the CPU the lookup's rows are then added into it sparsely: no zero-filled
        # (vocab, hidden) gradient and no second sum over the whole table.
        lookup_table = decoder_table = None
        if masked_lm_labels is not None and input_ids.device.type == "cpu":
            lookup_table, decoder_table = tied_word_tables(self.bert.embeddings.word_embeddings
                                                           .weight)
        sequence_output, pooled_output = self.bert(input_ids, token_type_ids, attention_mask,
                                                   token_index, padded, lookup_table)
        seq_relationship_scores = self.cls.seq_relationship(pooled_output)
        if masked_lm_labels is None:
            return self.cls.predictions(sequence_output), seq_relationship_scores

        # Decode only the masked positions: the vocabulary projection is the costliest
        # matmul of the model and ~85% of its rows would be thrown away.
        if masked_lm_index is None:
            masked_lm_index = masked_lm_indices(masked_lm_labels)
        hidden_size = sequence_output.shape[-1]
        masked_output = sequence_output.reshape(-1, hidden_size).index_select(0, masked_lm_index)
        prediction_scores = self.cls.predictions.padded_logits(masked_output, decoder_table)
        masked_lm_loss = cross_entropy_ignoring_negatives(
            prediction_scores, masked_lm_labels.reshape(-1).index_select(0, masked_lm_index),
            classes=self.config.vocab_size)
        if next_sentence_labels is None:
            return masked_lm_loss, masked_lm_loss, None
        next_sentence_loss = cross_entropy_ignoring_negatives(seq_relationship_scores,
                                                              next_sentence_labels)
        return masked_lm_loss + next_sentence_loss, masked_lm_loss, next_sentence_loss


class BertForQuestionAnswering(BertPreTrainedModel):
    TASK_HEAD = ("qa_outputs.",)  # weights that only fine-tuning trains

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights(self.qa_outputs)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                start_positions=None, end_positions=None, token_index=None, padded=None):
        """-> (start_logits, end_logits), or (loss, start_logits, end_logits) with positions.
        Positions outside the sequence (answer not in this window) are ignored, as BERT does;
        padding positions get a logit of -10000, so they take no part in the loss.
        token_index, padded: see BertModel."""
        sequence_output, _ = self.bert(input_ids, token_type_ids, attention_mask, token_index,
                                       padded)
        logits = self.qa_outputs(sequence_output)
        if attention_mask is not None:  # an answer never starts or ends in the padding
            logits = logits.masked_fill(attention_mask[..., None] == 0, -10000.0)
        start_logits, end_logits = logits.unbind(dim=-1)
        if start_positions is None or end_positions is None:
            return start_logits, end_logits
        seq_len = start_logits.shape[1]
        loss = (F.cross_entropy(start_logits.float(), start_positions.clamp(0, seq_len),
                                ignore_index=seq_len)
                + F.cross_entropy(end_logits.float(), end_positions.clamp(0, seq_len),
                                  ignore_index=seq_len)) / 2
        return loss, start_logits, end_logits


class BertForSequenceClassification(BertPreTrainedModel):
    TASK_HEAD = ("classifier.", "bert.pooler.")  # the classifier reads the pooler's output

    def __init__(self, config, num_labels):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_weights(self.classifier)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                token_index=None, padded=None):
        """-> logits (B, num_labels), or (loss, logits) with labels; num_labels == 1 is
        regression (STS-B) with a mean-squared-error loss. token_index, padded: see
        BertModel."""
        _, pooled_output = self.bert(input_ids, token_type_ids, attention_mask, token_index,
                                     padded)
        logits = self.classifier(self.dropout(pooled_output))
        if labels is None:
            return logits
        if self.num_labels == 1:
            loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        else:
            loss = F.cross_entropy(logits.float(), labels)
        return loss, logits


# ----------------------------------------------------------------------------- checkpoints

# Keys a checkpoint may lack or carry without harm: task heads, and the pooler, which
# Hugging Face's question-answering model does not have.
OPTIONAL_PREFIXES = ("cls.", "qa_outputs.", "classifier.", "bert.pooler.", "pooler.")
# Tensors whose first dimension is the (possibly padded) vocabulary.
VOCAB_ROW_SUFFIXES = ("word_embeddings.weight", "cls.predictions.bias",
                      "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
# A buffer that older Hugging Face checkpoints carry; ours is not persistent (not in state
# dicts), as in newer transformers.
IGNORED_SUFFIXES = ("embeddings.position_ids",)


def read_state_dict(path):
    """Reads a state dict from a Hugging Face directory, a .safetensors file, or a torch
    file holding either a bare state dict or a dict with key 'model' (ours, NVIDIA's)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "model.safetensors", path / "pytorch_model.bin")
                 if p.is_file()]
        if not found:
            raise FileNotFoundError(f"checkpoint directory {path} holds neither "
                                    f"model.safetensors nor pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    checkpoint = load_tensors(path)  # plain tensors only: pickled code is refused
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"checkpoint {path} holds no state dict (expected tensors by name, "
                         f"or a dict with key 'model')")
    return checkpoint


def normalize_key(key, model_has_bert_prefix):
    """Maps NVIDIA, DDP, torch.compile and TF-style names to ours (Hugging Face's)."""
    while key.startswith(("module.", "_orig_mod.")):  # nested in any order
        key = key.split(".", 1)[1]
    key = key.replace(".dense_act.", ".dense.")
    if key.endswith((".gamma", ".beta")):
        key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
    is_encoder_key = key.split(".")[0] in ("embeddings", "encoder", "pooler")
    if model_has_bert_prefix and is_encoder_key:
        key = "bert." + key  # a bare BertModel checkpoint loaded into a task model
    elif not model_has_bert_prefix and key.startswith("bert."):
        key = key[len("bert."):]  # a task-model checkpoint loaded into a bare BertModel
    return key


MAX_VOCAB_PADDING_MULTIPLE = 128  # the coarsest padding of the vocabulary seen in practice


def fit_vocab_rows(key, tensor, expected_rows, vocab_size):
    """Pads or trims the vocabulary dimension, only ever touching padding rows (NVIDIA pads
    30522 to 30528). A checkpoint with fewer rows than vocab_size, or with more than padding
    to a multiple of MAX_VOCAB_PADDING_MULTIPLE explains, was trained with another
    vocabulary: an error, not a silent cut."""
    rows = tensor.shape[0]
    if rows == expected_rows:
        return tensor
    padded_at_most = math.ceil(vocab_size / MAX_VOCAB_PADDING_MULTIPLE) * MAX_VOCAB_PADDING_MULTIPLE
    if rows < vocab_size or rows > max(expected_rows, padded_at_most):
        raise ValueError(f"checkpoint tensor {key} has {rows} vocabulary rows but the config's "
                         f"vocab_size is {vocab_size}: was it trained with another vocabulary? "
                         "(vocab_size in the config must be the checkpoint's)")
    if rows > expected_rows:
        return tensor[:expected_rows]
    padding = tensor.new_zeros((expected_rows - rows,) + tuple(tensor.shape[1:]))
    return torch.cat([tensor, padding])


def _checkpoint_tensors_for(model, state_dict):
    """Renames checkpoint keys to the model's and fits vocabulary rows; drops tied aliases
    (their original is loaded under its own name) and ignorable buffers."""
    expected = model.state_dict()
    has_bert_prefix = not isinstance(model, BertModel)
    tensors = {}
    for key, tensor in state_dict.items():
        key = normalize_key(key, has_bert_prefix)
        if key in TIED_KEYS or key.endswith(IGNORED_SUFFIXES):
            continue
        if key in expected and key.endswith(VOCAB_ROW_SUFFIXES):
            tensor = fit_vocab_rows(key, tensor, expected[key].shape[0], model.config.vocab_size)
        tensors[key] = tensor
    return tensors


def load_checkpoint(model, path, strict=True):
    """Loads a Hugging Face directory, an NVIDIA checkpoint or ours into `model` (any of the
    four BERT classes). Returns the (missing, unexpected) key lists. A shape mismatch always
    raises; with strict, so does any missing or unexpected encoder key, while task heads and
    the pooler may be missing (initialised fresh) or unused, and are reported by name."""
    tensors = _checkpoint_tensors_for(model, read_state_dict(path))
    expected = {k: v for k, v in model.state_dict().items() if k not in TIED_KEYS}
    missing = sorted(k for k in expected if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected)
    mismatched = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if mismatched:
        raise ValueError(f"checkpoint {path} does not fit the model config:\n  "
                         + "\n  ".join(mismatched))
    if strict:
        bad_missing = [k for k in missing if not k.startswith(OPTIONAL_PREFIXES)]
        bad_unexpected = [k for k in unexpected if not k.startswith(OPTIONAL_PREFIXES)]
        if bad_missing or bad_unexpected:
            raise ValueError(f"checkpoint {path} does not match {type(model).__name__}'s "
                             f"encoder: missing {bad_missing}, unexpected {bad_unexpected}")
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False)
    if missing or unexpected:
        logger.warning("loaded %s into %s; not in the checkpoint (initialised fresh): %s; "
                       "in the checkpoint but unused: %s", path, type(model).__name__,
                       missing or "none", unexpected or "none")
    return missing, unexpected


def export_huggingface(model, vocab_file, output_dir, do_lower_case=True, label_names=None):
    """Writes a directory that `transformers` loads with from_pretrained: config.json,
    model.safetensors (padding rows and tied aliases dropped), vocab.txt and
    tokenizer_config.json (the casing: AutoTokenizer lower-cases without it). A classifier's
    rows are named label_names (id2label; LABEL_<i> without them). Atomic: the directory
    appears complete or not at all, readable as the umask allows."""
    from safetensors.torch import save_file
    config = model.config
    state_dict = {}
    for key, tensor in model.state_dict().items():
        if key in TIED_KEYS:
            continue
        if key.endswith(VOCAB_ROW_SUFFIXES):
            tensor = tensor[:config.vocab_size]
        state_dict[key] = tensor.detach().to("cpu").contiguous()

    hf_config = {k: v for k, v in config.to_dict().items() if k != "pad_vocab_to_multiple_of"}
    hf_config.update(model_type="bert", architectures=[type(model).__name__])
    if isinstance(model, BertForSequenceClassification):
        hf_config["num_labels"] = model.num_labels
        names = label_names or [f"LABEL_{i}" for i in range(model.num_labels)]
        hf_config["id2label"] = dict(enumerate(names))
        hf_config["label2id"] = {name: i for i, name in enumerate(names)}

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it owner-only (0700)
        save_file(state_dict, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case,
                            "model_max_length": config.max_position_embeddings}
        (staging / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config, indent=2) + "\n")
        (staging / "vocab.txt").write_bytes(vocab_txt_bytes(vocab_file))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
