"""Specification tests for optimization.py: LAMB math, resume, parameter groups, schedules, AMP.

LAMB is checked against a float64 per-parameter reference written below from the formulas in
REFERENCE.md section 6, not against the implementation's own helpers.
"""

import io
import math

import pytest
import torch
from torch import nn

from optimization import (LAMB, NO_DECAY, linear_warmup_factor, linear_warmup_schedule, make_adamw,
                          make_lamb, param_groups, poly_warmup_factor, poly_warmup_schedule)
from optimization import _add_scaled_expanded

BETAS = (0.9, 0.999)
EPS = 1e-6
WEIGHT_DECAY = 0.01
LR = 0.05
NO_DECAY_LR = 0.02


class TinyBlock(nn.Module):
    """A dense layer, a LayerNorm, a zero-initialised decayed vector and a layer that gets no grad."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(6, 5)
        self.LayerNorm = nn.LayerNorm(5)
        self.gate = nn.Parameter(torch.zeros(5))  # ||p|| = 0 on step 1: trust ratio must be 1.0
        self.unused = nn.Linear(5, 3)  # never receives a gradient: must be skipped

    def forward(self, x):
        return self.LayerNorm(self.dense(x)) * (1 + self.gate)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = TinyBlock()
    with torch.no_grad():
        model.LayerNorm.weight.normal_(1.0, 0.1)  # non-trivial values in the no-decay group
    return model


def _lamb(model, max_grad_norm=1.0):
    groups = param_groups(model, WEIGHT_DECAY)
    groups[1]["lr"] = NO_DECAY_LR  # a group with its own learning rate
    return LAMB(groups, lr=LR, betas=BETAS, eps=EPS, max_grad_norm=max_grad_norm)


def _synthetic_grads(model, step, scale):
    """Deterministic gradients for every parameter except ``unused``; they grow with ``step``."""
    generator = torch.Generator().manual_seed(1000 + step)
    return {name: torch.randn(p.shape, generator=generator) * scale * (step + 1)
            for name, p in model.named_parameters() if not name.startswith("unused.")}


def _set_grads(model, grads):
    for name, p in model.named_parameters():
        p.grad = grads[name].to(p.dtype).clone() if name in grads else None


def _reference_lamb_step(params, grads, state, groups, max_grad_norm):
    """One LAMB step in float64, one parameter at a time.

    params/grads: name -> float64 tensor; groups: list of (names, lr, weight_decay).
    """
    global_norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    clip = global_norm / max_grad_norm if 0 < max_grad_norm < global_norm else 1.0
    beta1, beta2 = BETAS
    for names, lr, weight_decay in groups:
        for name in names:
            if name not in grads:
                continue
            p, g = params[name], grads[name] / clip
            s = state.setdefault(name, {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            s["step"] += 1
            s["m"] = beta1 * s["m"] + (1 - beta1) * g
            s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
            m_hat = s["m"] / (1 - beta1 ** s["step"])
            v_hat = s["v"] / (1 - beta2 ** s["step"])
            update = m_hat / (v_hat.sqrt() + EPS) + weight_decay * p
            trust_ratio = 1.0
            if weight_decay != 0:
                p_norm, u_norm = float(p.norm()), float(update.norm())
                if p_norm > 0 and u_norm > 0:
                    trust_ratio = p_norm / u_norm
            params[name] = p - lr * trust_ratio * update
    return global_norm


def _reference_groups(model):
    decay = [n for n, _ in model.named_parameters() if not any(k in n for k in NO_DECAY)]
    no_decay = [n for n, _ in model.named_parameters() if any(k in n for k in NO_DECAY)]
    return [(decay, LR, WEIGHT_DECAY), (no_decay, NO_DECAY_LR, 0.0)]


@pytest.mark.parametrize("grad_scale, max_grad_norm, clipping", [
    (10.0, 1.0, True),
    (1e-3, 1.0, False),
    (10.0, 0.0, False),  # max_grad_norm <= 0 disables clipping
])
def test_lamb_matches_float64_reference(grad_scale, max_grad_norm, clipping):
    model = _tiny_model()
    optimizer = _lamb(model, max_grad_norm)
    unused_before = model.unused.weight.detach().clone()
    reference = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    reference_state = {}
    for step in range(5):
        grads = _synthetic_grads(model, step, grad_scale)
        _set_grads(model, grads)
        optimizer.step()
        norm = _reference_lamb_step(reference, {n: g.double() for n, g in grads.items()},
                                    reference_state, _reference_groups(model), max_grad_norm)
        assert (0 < max_grad_norm < norm) == clipping
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach().double(), reference[name], rtol=1e-6, atol=1e-7,
                                       msg=lambda m: f"{name} after step {step + 1}: {m}")
    assert torch.equal(model.unused.weight, unused_before)
    assert model.unused.weight not in optimizer.state
    assert optimizer.state[model.gate]["step"] == 5


def test_zero_parameter_takes_trust_ratio_one():
    model = _tiny_model()
    optimizer = _lamb(model)
    _set_grads(model, _synthetic_grads(model, 0, 1e-3))
    grad = model.gate.grad.clone()
    optimizer.step()
    # Step 1: m_hat = g, v_hat = g^2, p = 0, so p_new = -lr * g / (|g| + eps).
    torch.testing.assert_close(model.gate.detach(), -LR * grad / (grad.abs() + EPS))


def _train(model, optimizer, scheduler, steps):
    for step in steps:
        _set_grads(model, _synthetic_grads(model, step, 10.0))
        optimizer.step()
        scheduler.step()


def _build_run(seed=0):
    model = _tiny_model(seed)
    optimizer = _lamb(model)
    scheduler = poly_warmup_schedule(optimizer, warmup_proportion=0.5, total_steps=6)
    return model, optimizer, scheduler


def test_lamb_state_dict_round_trip_continues_bit_identically(tmp_path):
    model, optimizer, scheduler = _build_run()
    _train(model, optimizer, scheduler, range(6))

    model_a, optimizer_a, scheduler_a = _build_run()
    _train(model_a, optimizer_a, scheduler_a, range(3))
    torch.save({"model": model_a.state_dict(), "optimizer": optimizer_a.state_dict(),
                "scheduler": scheduler_a.state_dict()}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model_b, optimizer_b, scheduler_b = _build_run(seed=1)  # different init: all must come from disk
    model_b.load_state_dict(checkpoint["model"])
    optimizer_b.load_state_dict(checkpoint["optimizer"])
    scheduler_b.load_state_dict(checkpoint["scheduler"])
    _train(model_b, optimizer_b, scheduler_b, range(3, 6))

    for (name, p), p_b in zip(model.named_parameters(), model_b.parameters()):
        assert torch.equal(p, p_b), name
    for p, p_b in zip(model.parameters(), model_b.parameters()):
        state, state_b = optimizer.state[p], optimizer_b.state[p_b]
        assert state.keys() == state_b.keys()
        for key in state:
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(state_b[key])), key
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in optimizer_b.param_groups]


def test_bf16_parameters_keep_fp32_state_and_master_copy(tmp_path):
    model16 = _tiny_model().to(torch.bfloat16)
    model32 = _tiny_model().to(torch.bfloat16).float()  # same starting values, fp32 storage
    optimizer16, optimizer32 = _lamb(model16), _lamb(model32)
    for step in range(3):
        grads = {n: g.bfloat16() for n, g in _synthetic_grads(model16, step, 10.0).items()}
        _set_grads(model16, grads)
        _set_grads(model32, {n: g.float() for n, g in grads.items()})
        optimizer16.step()
        optimizer32.step()
    for p16, p32 in zip(model16.parameters(), model32.parameters()):
        if p16.grad is None:
            continue
        state = optimizer16.state[p16]
        assert {state[k].dtype for k in ("exp_avg", "exp_avg_sq", "master_param")} == {torch.float32}
        torch.testing.assert_close(state["master_param"], p32.detach(), rtol=1e-5, atol=1e-7)
        assert torch.equal(p16, state["master_param"].bfloat16())

    torch.save(optimizer16.state_dict(), tmp_path / "optimizer.pt")
    restored = _lamb(model16)
    restored.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    for p in model16.parameters():
        for key, value in optimizer16.state[p].items():
            loaded = restored.state[p][key]
            assert torch.equal(torch.as_tensor(loaded), torch.as_tensor(value)), key
            if torch.is_tensor(value):
                assert loaded.dtype == torch.float32, key


def test_grad_scaler_skips_inf_step_then_applies_next():
    model, twin = _tiny_model(), _tiny_model()
    optimizer, twin_optimizer = _lamb(model), _lamb(twin)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(7))

    scaler.scale(model(x).square().sum()).backward()
    with torch.no_grad():
        model.dense.weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not optimizer.state
    assert scaler.get_scale() == 2.0 ** 9

    optimizer.zero_grad()
    scaler.scale(model(x).square().sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    twin(x).square().sum().backward()
    twin_optimizer.step()
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_lamb_rejects_bad_arguments_and_sparse_grads():
    p = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="lr"):
        LAMB([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        LAMB([p], betas=(0.9, 1.0))
    embedding = nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        LAMB(embedding.parameters()).step()


def _bert_like_model():
    """Module tree whose parameter names follow the Hugging Face BERT naming."""
    output = nn.Module()
    output.dense = nn.Linear(4, 4)
    output.LayerNorm = nn.LayerNorm(4)
    attention = nn.Module()
    attention.output = output
    layer = nn.Module()
    layer.attention = attention
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layer = nn.ModuleList([layer])
    model.embeddings = nn.Module()
    model.embeddings.word_embeddings = nn.Embedding(10, 4)
    model.embeddings.position_embeddings = nn.Embedding(8, 4)
    model.embeddings.position_embeddings.weight.requires_grad_(False)
    model.cls = nn.Module()
    model.cls.decoder = nn.Linear(4, 10)
    model.cls.decoder.weight = model.embeddings.word_embeddings.weight  # tied
    return model


def test_param_groups_split_bert_names():
    model = _bert_like_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [names[id(p)] for p in decay["params"]] == [
        "encoder.layer.0.attention.output.dense.weight",
        "embeddings.word_embeddings.weight",  # once, although cls.decoder.weight ties to it
    ]
    assert [names[id(p)] for p in no_decay["params"]] == [
        "encoder.layer.0.attention.output.dense.bias",
        "encoder.layer.0.attention.output.LayerNorm.weight",
        "encoder.layer.0.attention.output.LayerNorm.bias",
        "cls.decoder.bias",
    ]  # and the frozen position_embeddings.weight in neither


def test_make_lamb_falls_back_to_our_lamb_off_cuda():
    model = _tiny_model()
    optimizer = make_lamb(param_groups(model, 0.01), lr=6e-3, max_grad_norm=2.0)
    assert type(optimizer) is LAMB
    assert optimizer.max_grad_norm == 2.0
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.param_groups[0]["betas"] == BETAS and optimizer.param_groups[0]["eps"] == EPS


def test_make_adamw_applies_bias_correction_and_group_decay():
    model = _tiny_model()
    optimizer = make_adamw(param_groups(model, 0.01), lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] and optimizer.defaults["eps"] == EPS  # on the CPU too
    _set_grads(model, _synthetic_grads(model, 0, 1.0))
    bias, grad = model.dense.bias.detach().clone(), model.dense.bias.grad.clone()
    optimizer.step()
    # With bias correction the first step is lr * g / (|g| + eps); BertAdam's would be ~10x smaller.
    torch.testing.assert_close(model.dense.bias.detach(), bias - 1e-3 * grad / (grad.abs() + EPS))


@pytest.mark.parametrize("step, expected", [
    (1, 0.01),                   # first update: never zero
    (99, 0.99),                  # last warm-up step
    (100, math.sqrt(0.9)),       # warm-up done: decay starts from (1 - 0.1) ** 0.5
    (500, math.sqrt(0.5)),
    (1000, 0.0),
    (1200, 0.0),                 # past the end: clamped
])
def test_poly_warmup_factor(step, expected):
    assert poly_warmup_factor(step, 0.1, 1000) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [
    (1, 0.01),
    (99, 0.99),
    (100, 1.0),
    (550, 0.5),
    (1000, 0.0),
    (1200, 0.0),
])
def test_linear_warmup_factor(step, expected):
    assert linear_warmup_factor(step, 0.1, 1000) == pytest.approx(expected, abs=1e-12)


def test_schedule_edge_cases():
    assert poly_warmup_factor(1, 0.0, 1000) == pytest.approx(math.sqrt(0.999))
    assert linear_warmup_factor(1, 0.0, 1000) == pytest.approx(0.999)
    assert linear_warmup_factor(1000, 1.0, 1000) == 0.0
    assert poly_warmup_factor(1000, 1.0, 1000) == 0.0
    assert linear_warmup_factor(1, 0.5, 1) == 0.0  # a one-step run
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        poly_warmup_schedule(optimizer, 0.1, 0)
    with pytest.raises(ValueError, match="warmup_proportion"):
        linear_warmup_schedule(optimizer, 1.5, 10)


def _sgd_with_schedule(make_schedule, base_lr=0.1):
    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=base_lr)
    return optimizer, make_schedule(optimizer)


def _run_schedule(optimizer, scheduler, steps):
    """The learning rate each of ``steps`` optimizer updates runs with."""
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("make_schedule, factor", [
    (lambda opt: poly_warmup_schedule(opt, 0.2, 10), lambda n: poly_warmup_factor(n, 0.2, 10)),
    (lambda opt: linear_warmup_schedule(opt, 0.2, 10), lambda n: linear_warmup_factor(n, 0.2, 10)),
])
def test_update_n_uses_factor_n(make_schedule, factor):
    optimizer, scheduler = _sgd_with_schedule(make_schedule)
    used = _run_schedule(optimizer, scheduler, 10)
    assert used == pytest.approx([0.1 * factor(n) for n in range(1, 11)])
    assert used[0] == pytest.approx(0.1 * 0.5)


@pytest.mark.parametrize("load_optimizer_first", [True, False])
def test_schedule_resume(load_optimizer_first):
    make = lambda opt: poly_warmup_schedule(opt, 0.3, 10)  # noqa: E731
    optimizer, scheduler = _sgd_with_schedule(make)
    uninterrupted = _run_schedule(optimizer, scheduler, 10)

    optimizer, scheduler = _sgd_with_schedule(make)
    first = _run_schedule(optimizer, scheduler, 4)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    optimizer = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    if load_optimizer_first:
        optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler = make(optimizer)
    if not load_optimizer_first:
        optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    assert first + _run_schedule(optimizer, scheduler, 6) == uninterrupted


def test_expanded_lamb_step_sizes_add_each_tensors_own():
    """The accelerators' expanded addcmul (run here on the CPU): p_i += size_i * u_i."""
    torch.manual_seed(0)
    shapes = [(3, 5), (7,), (2, 2, 2), (1,)]
    masters = [torch.randn(shape) for shape in shapes]
    updates = [torch.randn(shape) for shape in shapes]
    step_sizes = torch.tensor([-0.5, 0.25, -2.0, 3.0])
    expanded = [m.clone() for m in masters]
    _add_scaled_expanded(expanded, updates, step_sizes,
                         torch.tensor([m.numel() for m in masters], dtype=torch.int32))
    for ours, master, update, size in zip(expanded, masters, updates, step_sizes):
        torch.testing.assert_close(ours, master + size * update, atol=1e-6, rtol=0)


def _lamb_steps_on_the_cpu(dtype, accelerator_path, steps=4):
    """A tiny model after `steps` LAMB steps, through the CPU's passes or (run here on the
    CPU) the accelerators' foreach passes; clipping on and off, two groups."""
    import optimization
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optimization, "host_reads_are_free", lambda device: not accelerator_path)
        model = _tiny_model().to(dtype)
        optimizer = _lamb(model, max_grad_norm=1.0)
        for step in range(steps):
            _set_grads(model, _synthetic_grads(model, step, 10.0 if step % 2 else 0.01))
            optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("compiled", [False, True], ids=["blocked", "compiled"])
@pytest.mark.parametrize("cpu_block", [7, 16], ids=["vectors-alone", "vectors-shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_lamb_matches_the_multi_tensor_path(dtype, cpu_block, compiled, monkeypatch):
    """The CPU's two passes per tensor, eager a block at a time (several blocks and a
    remainder per tensor) or inductor-compiled, against the foreach passes of the
    accelerators: fp32 and bf16 parameters (fp32 master copies). TinyBlock's 5-element
    vectors are smaller than a block: each alone in one (7), or three of the no-decay group
    in one and the zero `gate` alone (16)."""
    import optimization
    monkeypatch.setattr(optimization, "CPU_BLOCK", cpu_block)
    monkeypatch.setattr(optimization, "COMPILE_MIN_ELEMENTS", 16 if compiled else 2**62)
    monkeypatch.setattr(optimization, "COMPILE_MIN_MODEL", 16)
    used, adam_block = [], optimization._ADAM_BLOCK.compiled
    monkeypatch.setattr(optimization._ADAM_BLOCK, "compiled",
                        lambda *args: used.append(True) or adam_block(*args))
    cpu_model, cpu_lamb = _lamb_steps_on_the_cpu(dtype, accelerator_path=False)
    foreach_model, foreach_lamb = _lamb_steps_on_the_cpu(dtype, accelerator_path=True)
    assert optimization._ADAM_BLOCK.error is None and optimization._APPLY_BLOCK.error is None
    assert bool(used) == compiled
    for (name, ours), other in zip(cpu_model.named_parameters(), foreach_model.parameters()):
        torch.testing.assert_close(ours, other, atol=1e-6 if dtype == torch.float32 else 0,
                                   rtol=1e-5 if dtype == torch.float32 else 2**-8, msg=name)
    for ours, other in zip(cpu_lamb.state.values(), foreach_lamb.state.values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours[key], other[key], atol=1e-7, rtol=1e-5)


def test_cpu_lamb_falls_back_to_eager_passes_when_compiling_fails(monkeypatch, caplog):
    """A machine where torch.compile cannot work (no C++ compiler): one warning naming
    the error, and the same result as the eager passes, the failed tensor included."""
    import optimization
    monkeypatch.setattr(optimization, "CPU_BLOCK", 4)  # no tensor shares a block
    monkeypatch.setattr(optimization, "COMPILE_MIN_ELEMENTS", 16)
    monkeypatch.setattr(optimization, "COMPILE_MIN_MODEL", 16)

    def fails(*_):
        raise RuntimeError("no C++ compiler found")

    for block in (optimization._ADAM_BLOCK, optimization._APPLY_BLOCK):
        monkeypatch.setattr(block, "error", None)
        monkeypatch.setattr(block, "compiled", fails, raising=False)
    with caplog.at_level("WARNING"):
        failed_model, _ = _lamb_steps_on_the_cpu(torch.float32, accelerator_path=False)
    monkeypatch.setattr(optimization, "COMPILE_MIN_ELEMENTS", 2**62)
    eager_model, _ = _lamb_steps_on_the_cpu(torch.float32, accelerator_path=False)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: no C++ compiler found" in warnings[0]
    for ours, other in zip(failed_model.parameters(), eager_model.parameters()):
        assert torch.equal(ours, other)
