"""The CUDA paths, checked on the CPU: exports that hold no device, apex detected by its
compiled extensions, LAMB checkpoints that resume across apex and ours, an unpadded batch
attended without a mask, a training step without host syncs, and LAMB as a fixed number of
multi-tensor passes.

Host syncs are counted the way torch.cuda.set_sync_debug_mode would flag them on a GPU, at
the dispatcher (TorchDispatchMode): scalar reads (item, bool, float), nonzero, boolean
indexing and masked_select, repeat_interleave without an output size; plus tolist/numpy/cpu
called from Python.
"""

import contextlib
import importlib.util
import itertools
import logging
import sys
import types
from argparse import Namespace

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import model as modeling
import optimization
import run_pretraining
import utils
from conftest import REPO, random_batch, tiny_config
from model import (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                   BertModel, TokenLayout, add_batch_indices, load_checkpoint)
from optimization import FUSED_LAMB, LAMB, OUR_LAMB, lamb_kind, load_lamb_state, param_groups

# TorchScript is deprecated in torch 2.13 but is still what Triton's libtorch backend loads.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def import_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_model = import_script(REPO / "triton" / "export_model.py")


# ----------------------------------------------------------------------------- 1. export

def graph_nodes(block):
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from graph_nodes(inner)


def device_constants(traced):
    return [str(node).strip() for node in graph_nodes(traced.inlined_graph)
            if node.kind() == "prim::Constant"
            and node.output().type().kind() == "DeviceObjType"]


def another_device():
    """A device type other than the CPU where one is present ("meta" runs nothing)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.device_count() - 1)  # the last: not always 0
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return None


EXPORTED = {"squad": lambda: BertForQuestionAnswering(tiny_config()),
            "classification": lambda: BertForSequenceClassification(tiny_config(), num_labels=3)}


def traced_export(task, tmp_path):
    """The model as export_model.py writes it for Triton (traced on the CPU, saved, loaded)."""
    torch.manual_seed(0)
    model = EXPORTED[task]().eval()
    wrapper = export_model.TritonSignature(model).eval()
    example = export_model.random_inputs(model.config.vocab_size, 2, 16, torch.int64, seed=1)
    path = tmp_path / "model.pt"
    export_model.export_torchscript(wrapper, example, path)
    return wrapper, torch.jit.load(str(path))


@pytest.mark.parametrize("task", sorted(EXPORTED))
def test_traced_export_holds_no_device_constant(task, tmp_path):
    wrapper, traced = traced_export(task, tmp_path)
    assert device_constants(traced) == []
    # The graph still follows the inputs: another batch size, length and padding.
    inputs = export_model.random_inputs(wrapper.model.config.vocab_size, 3, 9, torch.int64, seed=5)
    with torch.no_grad():
        for want, got in zip(wrapper(*inputs), traced(*inputs)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", sorted(EXPORTED))
def test_export_traced_on_the_cpu_runs_on_another_device(task, tmp_path):
    device = another_device()
    if device is None:
        pytest.skip("no device other than the CPU here")
    wrapper, _ = traced_export(task, tmp_path)
    loaded = torch.jit.load(str(tmp_path / "model.pt"), map_location=device)
    inputs = export_model.random_inputs(wrapper.model.config.vocab_size, 3, 9, torch.int64, seed=5)
    with torch.no_grad():
        expected = wrapper(*inputs)
        found = loaded(*(t.to(device) for t in inputs))
    for want, got in zip(expected, found):
        assert got.device.type == device.type
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


def test_position_ids_buffer_is_not_saved_and_old_checkpoints_still_load(tmp_path):
    model = BertForPreTraining(tiny_config())
    assert "bert.embeddings.position_ids" in dict(model.named_buffers())
    assert not any("position_ids" in key for key in model.state_dict())
    # Older Hugging Face checkpoints carry the buffer.
    old = {**model.state_dict(), "bert.embeddings.position_ids": torch.arange(64)[None]}
    torch.save(old, tmp_path / "pytorch_model.bin")
    fresh = BertForPreTraining(tiny_config())
    assert load_checkpoint(fresh, tmp_path / "pytorch_model.bin") == ([], [])
    assert torch.equal(fresh.bert.embeddings.position_ids, torch.arange(64)[None])


def test_sequence_longer_than_the_position_table_is_named():
    model = BertModel(tiny_config(max_position_embeddings=8))
    with pytest.raises(ValueError, match="a sequence of 11 tokens is longer than the model's "
                                         "max_position_embeddings \\(8\\)"):
        model(*random_batch(model.config, seq=11))


# ----------------------------------------------------------------------------- 6. apex

class FakeFusedLayerNorm(nn.Module):
    """apex's FusedLayerNorm as far as the model sees it: not an nn.LayerNorm, the same
    parameter names, and its extension imported at construction."""

    def __init__(self, hidden_size, eps=1e-5):
        import fused_layer_norm_cuda  # noqa: F401 - raises in a Python-only build
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((hidden_size,), 2.0))  # init_weights sets 1
        self.bias = nn.Parameter(torch.full((hidden_size,), 0.5))  # and 0

    def forward(self, x):
        return nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class FakeFusedLAMB(torch.optim.Optimizer):
    """apex.optimizers.FusedLAMB's state layout and math (per tensor, for the CPU): hyper-
    parameters and one step count per group (group['step'], created by the first step),
    exp_avg/exp_avg_sq per parameter; its constructor needs amp_C like apex's."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-6,
                 weight_decay=0.01, amsgrad=False, adam_w_mode=True, grad_averaging=True,
                 set_grad_none=True, max_grad_norm=1.0, use_nvlamb=False):
        import amp_C  # noqa: F401 - apex raises "requires cuda extensions" without it
        super().__init__(params, {"lr": lr, "bias_correction": bias_correction, "betas": betas,
                                  "eps": eps, "weight_decay": weight_decay,
                                  "grad_averaging": grad_averaging,
                                  "max_grad_norm": max_grad_norm})

    @torch.no_grad()
    def step(self):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        clip = torch.clamp(norm / self.defaults["max_grad_norm"], min=1.0)
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            bias_correction1 = 1 - beta1 ** group["step"]
            bias_correction2 = 1 - beta2 ** group["step"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                g = p.grad / clip
                m = state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                v = state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / bias_correction1) / ((v / bias_correction2).sqrt() + group["eps"])
                update += group["weight_decay"] * p
                ratio = 1.0
                if group["weight_decay"] != 0 and p.norm() > 0 and update.norm() > 0:
                    ratio = p.norm() / update.norm()
                p.sub_(group["lr"] * ratio * update)


def fake_apex(monkeypatch, compiled):
    """apex in sys.modules; with `compiled`, its extensions too, else a Python-only build."""
    apex = types.ModuleType("apex")
    apex.normalization = types.ModuleType("apex.normalization")
    apex.normalization.FusedLayerNorm = FakeFusedLayerNorm
    apex.optimizers = types.ModuleType("apex.optimizers")
    apex.optimizers.FusedLAMB = FakeFusedLAMB
    for name, module in (("apex", apex), ("apex.normalization", apex.normalization),
                         ("apex.optimizers", apex.optimizers)):
        monkeypatch.setitem(sys.modules, name, module)
    for extension in ("fused_layer_norm_cuda", "amp_C"):  # None: `import` raises ImportError
        monkeypatch.setitem(sys.modules, extension,
                            types.ModuleType(extension) if compiled else None)


@pytest.fixture
def fresh_detection():
    """apex is looked for once per process: forget the answer before and after the test."""
    for cached in (modeling.layer_norm_class, optimization._apex_fused_lamb):
        cached.cache_clear()
    yield
    for cached in (modeling.layer_norm_class, optimization._apex_fused_lamb):
        cached.cache_clear()


def test_python_only_apex_falls_back_and_says_so_once(monkeypatch, caplog, fresh_detection):
    fake_apex(monkeypatch, compiled=False)
    caplog.set_level(logging.DEBUG, logger="bert")
    models = [BertModel(tiny_config()), BertModel(tiny_config())]
    layer_norms = {type(m) for model in models for name, m in model.named_modules()
                   if name.endswith("LayerNorm")}
    assert layer_norms == {nn.LayerNorm}
    optimizer = optimization.make_lamb(param_groups(models[0], 0.01), lr=1e-3)
    optimization.make_lamb(param_groups(models[1], 0.01), lr=1e-3)
    assert type(optimizer) is LAMB
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines  # one per kernel, not one per model or optimizer
    assert lines[0].startswith("LayerNorm: torch.nn.LayerNorm; apex is installed without its "
                               "compiled extension fused_layer_norm_cuda")
    assert lines[1].startswith("LAMB: optimization.LAMB; apex is installed without its "
                               "compiled extension amp_C")


def test_compiled_apex_is_used_and_logged(monkeypatch, caplog, fresh_detection):
    fake_apex(monkeypatch, compiled=True)
    caplog.set_level(logging.INFO, logger="bert")
    model = BertModel(tiny_config())
    layer_norms = [m for name, m in model.named_modules() if name.endswith("LayerNorm")]
    assert len(layer_norms) == 5 and all(type(m) is FakeFusedLayerNorm for m in layer_norms)
    assert all(torch.equal(m.weight, torch.ones(32)) and torch.equal(m.bias, torch.zeros(32))
               for m in layer_norms)  # initialised as BERT's
    assert optimization._apex_fused_lamb() is FakeFusedLAMB
    # FusedLAMB is CUDA-only: CPU parameters still get ours.
    assert type(optimization.make_lamb(param_groups(model, 0.01), lr=1e-3)) is LAMB
    assert [r.getMessage() for r in caplog.records] == [
        "LayerNorm: apex FusedLayerNorm", "LAMB: apex FusedLAMB on CUDA (amp_C found)"]


# ----------------------------------------------------------------------------- 7. LAMB kind

class TinyNet(nn.Module):
    """Decayed weights, a no-decay bias and LayerNorm: both trust-ratio branches."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(6, 5)
        self.LayerNorm = nn.LayerNorm(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.LayerNorm(self.dense(x)))


def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


def set_grads(model, step):
    """Deterministic gradients that grow with the step (clipping is exercised)."""
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * (step + 1)


def train(model, optimizer, steps):
    for step in steps:
        set_grads(model, step)
        optimizer.step()


def make(kind, model):
    groups = param_groups(model, 0.01)
    if kind == FUSED_LAMB:
        return FakeFusedLAMB(groups, lr=0.05, bias_correction=True, betas=(0.9, 0.999),
                             eps=1e-6, weight_decay=0.01, max_grad_norm=1.0)
    return LAMB(groups, lr=0.05)


@pytest.mark.parametrize("source, target", [(FUSED_LAMB, OUR_LAMB), (OUR_LAMB, FUSED_LAMB)])
@pytest.mark.parametrize("recorded", [True, False])  # False: a checkpoint from before the kind
def test_lamb_checkpoint_resumes_in_the_other_kind(source, target, recorded, monkeypatch,
                                                   fresh_detection):
    fake_apex(monkeypatch, compiled=True)
    whole_model = tiny_net()
    whole = make(source, whole_model)
    train(whole_model, whole, range(6))

    first_model = tiny_net()
    first = make(source, first_model)
    train(first_model, first, range(3))
    assert lamb_kind(first) == source
    saved = first.state_dict()
    resumed_model = tiny_net()
    resumed_model.load_state_dict(first_model.state_dict())
    resumed = make(target, resumed_model)
    load_lamb_state(resumed, saved, source if recorded else None)
    train(resumed_model, resumed, range(3, 6))

    for p, q in zip(whole_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    if target == OUR_LAMB:
        assert {resumed.state[p]["step"] for p in resumed_model.parameters()} == {6}
    else:
        assert [g["step"] for g in resumed.param_groups] == [6, 6]
        assert all(g["bias_correction"] and g["max_grad_norm"] == 1.0 for g in resumed.param_groups)


def test_a_restarted_bias_correction_would_show(monkeypatch, fresh_detection):
    """The comparison above is sensitive: loading FusedLAMB's state without the step count
    fails (the bug), and restarting the count moves the weights past the tolerance."""
    fake_apex(monkeypatch, compiled=True)
    model = tiny_net()
    fused = make(FUSED_LAMB, model)
    train(model, fused, range(3))
    with pytest.raises(KeyError, match="step"):
        ours = make(OUR_LAMB, model)
        ours.load_state_dict(fused.state_dict())
        train(model, ours, [3])

    whole_model, restarted_model = tiny_net(), tiny_net()
    whole = make(FUSED_LAMB, whole_model)
    train(whole_model, whole, range(4))
    restarted = make(FUSED_LAMB, restarted_model)
    train(restarted_model, restarted, range(3))
    for group in restarted.param_groups:
        del group["step"]
    train(restarted_model, restarted, [3])
    assert not torch.allclose(restarted_model.LayerNorm.bias, whole_model.LayerNorm.bias,
                              rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_kind_is_refused_with_what_to_do():
    model = tiny_net()
    with pytest.raises(ValueError, match="written by 'FusedLAMBAMP', which cannot be resumed "
                                         "here .*--init_checkpoint"):
        load_lamb_state(make(OUR_LAMB, model), make(OUR_LAMB, model).state_dict(), "FusedLAMBAMP")


def test_pretraining_checkpoint_records_the_kind_and_restore_converts(monkeypatch,
                                                                      fresh_detection):
    fake_apex(monkeypatch, compiled=True)
    args = Namespace(phase2=False)
    distributed = utils.Distributed(0, 0, 1, torch.device("cpu"))
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    optimizer = make(FUSED_LAMB, model)
    scheduler = optimization.poly_warmup_schedule(optimizer, 0.5, 10)
    scaler = utils.make_grad_scaler("fp32", distributed.device)
    input_ids, token_type_ids, attention_mask = random_batch(model.config)
    labels = torch.where(attention_mask.bool(), input_ids, -1)
    for _ in range(2):
        model(input_ids, token_type_ids, attention_mask, labels,
              torch.tensor([0, 1, 0]))[0].backward()
        optimizer.step()
        scheduler.step()
    state = run_pretraining.checkpoint_state(model, optimizer, scheduler, scaler, 2, None,
                                             args, distributed)
    assert state["optimizer_kind"] == FUSED_LAMB

    resumed = BertForPreTraining(tiny_config())
    ours = LAMB(param_groups(resumed, 0.01), lr=0.05)  # the base lr is the run's own
    step, _ = run_pretraining.restore(state, "resume", args, resumed, ours,
                                      optimization.poly_warmup_schedule(ours, 0.5, 10),
                                      utils.make_grad_scaler("fp32", distributed.device))
    assert step == 2
    assert {ours.state[p]["step"] for p in resumed.parameters()} == {2}
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(optimizer.state[p]["exp_avg"], ours.state[q]["exp_avg"])
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in optimizer.param_groups]


# ----------------------------------------------------------------------------- 8, 9. host

def pretraining_batch(kind, seed=0):
    """A CPU batch without padding, with a little, or mostly padding (then packed)."""
    config = tiny_config()
    generator = torch.Generator().manual_seed(seed)
    batch, seq = 4, 16
    lengths = {"unpadded": [16, 16, 16, 16], "padded": [16, 16, 15, 14],
               "mostly_padded": [5, 3, 2, 4]}[kind]
    attention_mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).long()
    input_ids = torch.randint(5, config.vocab_size, (batch, seq), generator=generator)
    masked = (torch.rand(batch, seq, generator=generator) < 0.3) & attention_mask.bool()
    masked[:, 0] = True  # at least one prediction per row
    return {"input_ids": input_ids * attention_mask,
            "token_type_ids": (torch.arange(seq)[None] >= 4).long() * attention_mask,
            "attention_mask": attention_mask,
            "masked_lm_labels": torch.where(masked, input_ids, -1),
            "next_sentence_labels": torch.tensor([0, 1, 1, 0])}


def test_add_batch_indices_finds_padding_packing_and_masked_positions():
    plain = add_batch_indices(pretraining_batch("unpadded"))
    assert plain["padded"] is False and "token_index" not in plain
    padded = add_batch_indices(pretraining_batch("padded"))
    assert padded["padded"] is True and "token_index" not in padded  # 95% real: not packed
    packed = add_batch_indices(pretraining_batch("mostly_padded"))
    batch = pretraining_batch("mostly_padded")
    assert packed["padded"] is True
    real = [row * 16 + column for row, length in enumerate([5, 3, 2, 4])
            for column in range(length)]
    assert torch.equal(packed["token_index"], torch.tensor(real))
    labels = batch["masked_lm_labels"].reshape(-1)
    assert torch.equal(packed["masked_lm_index"], torch.nonzero(labels >= 0).squeeze(1))
    assert all(torch.equal(packed[k], v) for k, v in batch.items())  # the batch itself unchanged
    with pytest.raises(ValueError, match="before its transfer to the device; its attention_mask "
                                         "is on meta"):
        add_batch_indices({**batch, "attention_mask": batch["attention_mask"].to("meta")})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_add_batch_indices_pins_every_tensor():
    pinned = add_batch_indices(pretraining_batch("mostly_padded"), pin_memory=True)
    assert all(v.is_pinned() for v in pinned.values() if torch.is_tensor(v))


@pytest.mark.parametrize("kind", ["unpadded", "padded", "mostly_padded"])
def test_precomputed_indices_give_identical_losses_and_gradients(kind):
    batch = pretraining_batch(kind)
    results = []
    for prepared in (batch, add_batch_indices(batch)):
        torch.manual_seed(0)
        model = BertForPreTraining(tiny_config()).train()  # dropout on: same draws both times
        losses = model(**prepared)
        losses[0].backward()
        results.append((torch.stack(losses), [p.grad for p in model.parameters()]))
    (losses, grads), (losses_indexed, grads_indexed) = results
    assert torch.equal(losses, losses_indexed)
    assert all(torch.equal(g, h) for g, h in zip(grads, grads_indexed))


@pytest.mark.parametrize("kind, masked", [("unpadded", False), ("padded", True),
                                          ("mostly_padded", True)])
def test_attention_gets_a_mask_only_when_something_is_padded(kind, masked, monkeypatch):
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", recording_sdpa)
    model = BertModel(tiny_config()).eval()
    batch = pretraining_batch(kind)
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    output, _ = model(*inputs)
    assert len(masks) == 2 and all((m is not None) == masked for m in masks)
    monkeypatch.setattr(TokenLayout, "STATIC", True)  # the export's layout: always the mask
    always_masked, _ = model(*inputs)
    assert all(m is not None for m in masks[2:])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(output[real], always_masked[real], rtol=1e-5, atol=1e-5)


class SyncCounter(TorchDispatchMode):
    """Counts the calls that would make the host wait for a GPU (see the module docstring).

    Everything counts as device data except inside `on_host()`: the CPU stands for both here,
    and add_batch_indices works on the batch before its transfer.
    """

    SCALAR_READS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                    "equal", "is_nonzero")
    PYTHON_READS = ("tolist", "numpy", "cpu")

    def __init__(self, monkeypatch):
        super().__init__()
        self.count, self.seen, self.host = 0, [], False
        monkeypatch.setattr(optimization, "host_reads_are_free", lambda device: False)
        for name in self.PYTHON_READS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self._record(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def _record(self, name):
        if not self.host:
            self.count += 1
            self.seen.append(name)

    @contextlib.contextmanager
    def on_host(self):
        self.host = True
        try:
            yield
        finally:
            self.host = False

    def host_side(self, function):
        def run_on_host(*args, **kwargs):
            with self.on_host():
                return function(*args, **kwargs)
        return run_on_host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self.SCALAR_READS or self._boolean_index(name, args) or (
                name == "repeat_interleave" and kwargs.get("output_size") is None
                and torch.is_tensor(args[0]) and args[0].dtype in (torch.int32, torch.int64)
                and len(args) == 1):
            self._record(name)
        return func(*args, **kwargs)

    @staticmethod
    def _boolean_index(name, args):
        if name not in ("index", "index_put", "index_put_", "_index_put_impl_"):
            return False
        return any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])


def training_setup(accumulation=2):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).train()
    optimizer = optimization.make_lamb(param_groups(model, 0.01), lr=1e-3)
    scheduler = optimization.poly_warmup_schedule(optimizer, 0.5, 100)
    args = run_pretraining.parse_args([
        "--input_dir", "unused", "--config_file", "unused", "--output_dir", "unused",
        "--train_batch_size", str(4 * accumulation), "--gradient_accumulation_steps",
        str(accumulation), "--max_steps", "100", "--log_freq", "100",
        "--num_steps_per_checkpoint", "100", "--skip_checkpoint", "--disable_progress_bar"])
    distributed = utils.Distributed(0, 0, 1, torch.device("cpu"))
    scaler = utils.make_grad_scaler("fp32", distributed.device)
    return run_pretraining.Trainer(model, optimizer, scheduler, scaler, args, distributed)


def batch_stream():
    kinds = ["unpadded", "padded", "mostly_padded"]
    step = 0
    while True:
        yield pretraining_batch(kinds[step % 3], seed=step)
        step += 1


def test_the_model_alone_would_sync_every_micro_batch(monkeypatch):
    """The counter sees the syncs that add_batch_indices removes: without the indices, the
    layout's nonzero and the masked-position lookup run on the device."""
    model = BertForPreTraining(tiny_config()).train()
    batch = pretraining_batch("mostly_padded")
    with SyncCounter(monkeypatch) as counter:
        model(**batch)[0].backward()
    assert counter.seen.count("nonzero") == 2, counter.seen
    with SyncCounter(monkeypatch) as counter:
        indexed = counter.host_side(add_batch_indices)(batch)
        model(**indexed)[0].backward()
    assert counter.seen == []


def test_a_training_step_syncs_at_most_twice_outside_logging_steps(monkeypatch):
    trainer = training_setup()
    step_syncs, loop_syncs = [], []
    with SyncCounter(monkeypatch) as counter:
        monkeypatch.setattr(run_pretraining, "add_batch_indices",
                            counter.host_side(run_pretraining.add_batch_indices))
        original_step = trainer.step

        def counted_step(batches):
            before = counter.count
            loop_syncs.append(before)
            result = original_step(batches)
            step_syncs.append(counter.count - before)
            return result

        trainer.step = counted_step
        trainer.args.steps_this_run = 5
        with utils.PreemptionFlag() as preemption:
            run_pretraining.train(trainer.args, trainer, batch_stream(), 0,
                                  utils.MetricLogger(None), trainer.distributed, preemption)
    per_iteration = [b - a for a, b in itertools.pairwise(loop_syncs)]  # step 5 logs: left out
    assert step_syncs == [0] * 5, counter.seen  # Trainer.step itself: none in fp32
    assert len(per_iteration) == 4 and max(per_iteration) <= 2, (per_iteration, counter.seen)


# ----------------------------------------------------------------------------- 13. LAMB

METADATA_ONLY = {"view", "split_with_sizes", "slice", "select", "unbind", "detach", "alias",
                 "_record_function_enter_new", "_record_function_exit"}


class OpRecorder(TorchDispatchMode):
    """The ops that would launch GPU work, and the foreach ops the GPU would run per tensor
    (tensor lists whose shapes do not match position by position take PyTorch's slow path)."""

    def __init__(self):
        super().__init__()
        self.kernels, self.per_tensor = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in METADATA_ONLY:
            self.kernels.append(name)
        lists = [a for a in args if isinstance(a, (list, tuple)) and a
                 and all(torch.is_tensor(t) for t in a)]
        if name.startswith("_foreach") and any(
                [t.shape for t in other] != [t.shape for t in lists[0]] for other in lists[1:]):
            self.per_tensor.append(name)
        return func(*args, **(kwargs or {}))


def lamb_step_ops(layers, monkeypatch):
    """What the second LAMB step of a stack of `layers` (Linear, LayerNorm) dispatches."""
    monkeypatch.setattr(optimization, "host_reads_are_free", lambda device: False)
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
                            for _ in range(layers)))
    optimizer = LAMB(param_groups(model, 0.01), lr=1e-3)
    train(model, optimizer, [0])  # state initialisation: once, per tensor
    set_grads(model, 1)
    with SyncCounter(monkeypatch) as syncs, OpRecorder() as ops:
        optimizer.step()
    return ops, syncs


def test_lamb_step_is_a_fixed_number_of_multi_tensor_passes(monkeypatch):
    small, small_syncs = lamb_step_ops(2, monkeypatch)  # 8 tensors
    large, large_syncs = lamb_step_ops(12, monkeypatch)  # 48 tensors
    assert large.kernels == small.kernels  # the same passes, whatever the number of tensors
    assert len(large.kernels) < 50
    assert large.per_tensor == [] and small.per_tensor == []
    assert large_syncs.seen == [] and small_syncs.seen == []
