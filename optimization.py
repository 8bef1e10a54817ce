"""Optimizers, parameter groups and learning-rate schedules for BERT pre-training and fine-tuning.

Pre-training uses LAMB (``make_lamb``), fine-tuning uses Adam with decoupled weight decay
(``make_adamw``); both take the two groups built by ``param_groups``. Learning rates follow
``poly_warmup_schedule`` (pre-training) or ``linear_warmup_schedule`` (fine-tuning)::

    optimizer = make_lamb(param_groups(model, weight_decay=0.01), lr=6e-3)
    scheduler = poly_warmup_schedule(optimizer, warmup_proportion=0.2843, total_steps=7038)
    for batch in batches:
        ...backward...
        optimizer.step()
        scheduler.step()

Step-index convention: optimizer update n (counting from 1) runs with ``base_lr * factor(n)``.
NVIDIA gets this by calling ``scheduler.step()`` *before* ``optimizer.step()``; here the LambdaLR
lambda is shifted by one so the usual PyTorch order (optimizer, then scheduler) gives the same
values. The first update with warm-up therefore uses ``factor(1) > 0``, never a zero learning rate.

Deliberate deviations from NVIDIA's BERT for PyTorch:
- LAMB is written with ``torch._foreach_*`` multi-tensor ops instead of apex's CUDA kernels. The
  math is apex ``FusedLAMB`` with its defaults (bias correction, adam_w_mode, grad_averaging,
  use_nvlamb=False, global clipping to max_grad_norm); AMSGrad, L2 mode and NVLAMB are not offered.
  ``make_lamb`` still picks apex's FusedLAMB when it is installed and the parameters are on CUDA.
- LAMB counts steps per parameter (PyTorch's convention) where apex counts per group; they differ
  only for a parameter that has no gradient on some steps, whose bias correction then follows its
  own update count.
- bf16/fp16 parameters get fp32 moments and an fp32 master copy inside LAMB (FusedLAMBAMP keeps
  master copies for fp16 only). The model's low-precision tensor is rewritten from the master copy
  after each step, so updates smaller than one bf16 ulp still accumulate.
- LAMB has no fused GradScaler hook: ``GradScaler.step`` unscales, checks for inf/NaN (one host
  sync) and skips the step itself, where FusedLAMBAMP reads found_inf inside its kernel.
- Fine-tuning uses ``torch.optim.AdamW``, which applies Adam's bias correction; Google's BertAdam
  and NVIDIA's fp16 FusedAdam(bias_correction=False) do not. It also does not clip per tensor as
  BertAdam did; callers clip the global gradient norm before stepping, as run_squad.py does.
- Schedules are one LambdaLR over pure factor functions rather than a family of scheduler classes.
  Both factors are clamped at 0 for steps past total_steps.
- The default no-decay names are the fine-tuning list for both phases. NVIDIA's pre-training list
  also matches 'gamma' and 'beta', TF-era names that do not occur in our (Hugging Face) naming.
"""

from itertools import chain

import torch
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype):
    """LAMB math and state run in fp32 for half types, in the parameter's own dtype otherwise."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class LAMB(torch.optim.Optimizer):
    """Layer-wise adaptive moments (LAMB) as in NVIDIA's BERT recipe (apex FusedLAMB defaults).

    Per step: the global L2 norm G of all gradients (every group) is computed and, when
    max_grad_norm > 0 and G > max_grad_norm, every gradient is divided by G / max_grad_norm.
    Then, per tensor: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; bias-corrected
    update u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p; for groups with weight_decay != 0
    trust_ratio = ||p|| / ||u|| (1.0 when either norm is zero), else 1.0; p -= lr * trust_ratio * u.

    Args:
        params: parameters or parameter groups (groups may set their own lr and weight_decay).
        lr: learning rate.
        betas: decay rates (b1, b2) of the first and second moments.
        eps: added to sqrt(v_hat) in the denominator.
        weight_decay: decoupled weight decay, added to the update before the trust ratio.
        max_grad_norm: global gradient-norm clip; <= 0 disables clipping.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 max_grad_norm=1.0):
        _check_lamb_args(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        # One clip for the whole model, so it is not a per-group setting.
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one LAMB update to every parameter that has a gradient; returns closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group_buckets = [self._collect_buckets(group) for group in self.param_groups]
        all_buckets = [bucket for buckets in group_buckets for bucket in buckets]
        if not all_buckets:
            return loss
        clip_divisor = self._clip_divisor(all_buckets)
        for group, buckets in zip(self.param_groups, group_buckets):
            for bucket in buckets:
                self._update_bucket(group, bucket, clip_divisor)
        return loss

    def _collect_buckets(self, group):
        """Group the parameters that have gradients by (device, dtype) for the foreach kernels.

        Initialises missing state and advances each parameter's step count.
        """
        buckets = {}
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError(
                    f"LAMB got a sparse gradient for a parameter of shape {tuple(param.shape)}; "
                    "it needs dense gradients (use a dense nn.Embedding, sparse=False).")
            state = self.state[param]
            if not state:
                _init_state(state, param)
            state["step"] += 1
            bucket = buckets.setdefault((param.device, param.dtype), _empty_bucket())
            bucket["params"].append(param)
            bucket["grads"].append(param.grad)
            bucket["exp_avgs"].append(state["exp_avg"])
            bucket["exp_avg_sqs"].append(state["exp_avg_sq"])
            bucket["masters"].append(state.get("master_param", param))
            bucket["steps"].append(state["step"])
        return list(buckets.values())

    def _clip_divisor(self, buckets):
        """Return the tensor G / max_grad_norm clamped below at 1 (G: global grad norm), or None.

        Kept as a tensor, never compared on the host, so clipping costs no device sync.
        """
        if self.max_grad_norm <= 0:
            return None
        per_device = {}
        for bucket in buckets:
            grads = bucket["grads"]
            # Half-precision squares would lose the small gradients; accumulate them in fp32.
            norms = torch._foreach_norm(grads, 2, dtype=_compute_dtype(grads[0].dtype))
            per_device.setdefault(grads[0].device, []).extend(norms)
        device_norms = [torch.linalg.vector_norm(torch.stack(norms)) for norms in per_device.values()]
        first_device = device_norms[0].device
        global_norm = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in device_norms]))
        return torch.clamp(global_norm / self.max_grad_norm, min=1.0)

    def _update_bucket(self, group, bucket, clip_divisor):
        """The LAMB update for one (device, dtype) bucket of one parameter group."""
        beta1, beta2 = group["betas"]
        masters, exp_avgs, exp_avg_sqs = bucket["masters"], bucket["exp_avgs"], bucket["exp_avg_sqs"]
        grads = _scaled_grads(bucket["grads"], masters[0].dtype, clip_divisor)

        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

        bias_correction1 = [1 - beta1 ** step for step in bucket["steps"]]
        bias_correction2 = [1 - beta2 ** step for step in bucket["steps"]]
        denominators = torch._foreach_div(exp_avg_sqs, bias_correction2)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, bias_correction1)
        torch._foreach_div_(updates, denominators)

        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, masters, alpha=group["weight_decay"])
            # Layer-wise adaptation only where weights decay: biases and LayerNorm parameters
            # take a plain Adam-style step, as in apex with use_nvlamb=False.
            torch._foreach_mul_(updates, _trust_ratios(masters, updates))
        torch._foreach_add_(masters, updates, alpha=-group["lr"])
        if masters[0] is not bucket["params"][0]:
            torch._foreach_copy_(bucket["params"], masters)

    def load_state_dict(self, state_dict):
        """Load state, keeping the fp32 moments and master copies of bf16/fp16 parameters fp32."""
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict casts floating-point state to each parameter's dtype, which
        # would round the fp32 state of low-precision parameters; restore it from the source.
        saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
        params = chain.from_iterable(group["params"] for group in self.param_groups)
        for saved_id, param in zip(saved_ids, params):
            if param.dtype not in _LOW_PRECISION or saved_id not in state_dict["state"]:
                continue
            for key, value in state_dict["state"][saved_id].items():
                if torch.is_tensor(value):
                    self.state[param][key] = value.to(
                        device=param.device, dtype=torch.float32, copy=True)


def _check_lamb_args(lr, betas, eps, weight_decay):
    if lr < 0:
        raise ValueError(f"LAMB lr must be >= 0, got {lr}.")
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"LAMB betas must be two values in [0, 1), got {betas}.")
    if eps < 0:
        raise ValueError(f"LAMB eps must be >= 0, got {eps}.")
    if weight_decay < 0:
        raise ValueError(f"LAMB weight_decay must be >= 0, got {weight_decay}.")


def _init_state(state, param):
    dtype = _compute_dtype(param.dtype)
    # An int step saves and loads exactly (also with weights_only=True) and needs no device sync.
    state["step"] = 0
    state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
    if dtype != param.dtype:
        state["master_param"] = param.detach().to(dtype=dtype, copy=True)


def _empty_bucket():
    return {key: [] for key in ("params", "grads", "exp_avgs", "exp_avg_sqs", "masters", "steps")}


def _scaled_grads(grads, dtype, clip_divisor):
    """Gradients in the compute dtype, divided by the clip divisor; p.grad itself is left as is."""
    if grads[0].dtype != dtype:
        grads = [grad.to(dtype) for grad in grads]
        if clip_divisor is not None:
            torch._foreach_div_(grads, clip_divisor.to(grads[0].device))
        return grads
    if clip_divisor is None:
        return grads
    return torch._foreach_div(grads, clip_divisor.to(grads[0].device))


def _trust_ratios(params, updates):
    """Per-tensor ||p|| / ||u||, or 1.0 where either norm is zero, as a list of 0-d tensors."""
    param_norms = torch.stack(torch._foreach_norm(params))
    update_norms = torch.stack(torch._foreach_norm(updates))
    both_nonzero = (param_norms > 0) & (update_norms > 0)
    ratios = torch.where(both_nonzero, param_norms / update_norms, torch.ones_like(param_norms))
    return list(ratios.unbind(0))


def _apex_fused_lamb():
    try:
        from apex.optimizers import FusedLAMB
    except ImportError:
        return None
    return FusedLAMB


def _all_params(groups):
    """The parameter tensors in a list of tensors or of parameter-group dicts."""
    return [p for group in groups for p in (group["params"] if isinstance(group, dict) else [group])]


def make_lamb(param_groups, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0,
              prefer_apex=True):
    """The pre-training optimizer: apex FusedLAMB on CUDA when installed, else our LAMB.

    Both are configured to the same math (see LAMB). Their state dicts are not interchangeable:
    resume with the same kind of optimizer that wrote the checkpoint.
    """
    groups = list(param_groups)
    fused_lamb = _apex_fused_lamb() if prefer_apex else None
    if fused_lamb is not None and all(p.is_cuda for p in _all_params(groups)):
        return fused_lamb(groups, lr=lr, bias_correction=True, betas=betas, eps=eps,
                          weight_decay=weight_decay, adam_w_mode=True, grad_averaging=True,
                          max_grad_norm=max_grad_norm, use_nvlamb=False)
    return LAMB(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                max_grad_norm=max_grad_norm)


def make_adamw(param_groups, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
    """The fine-tuning optimizer: torch AdamW, fused on CUDA and foreach elsewhere.

    weight_decay is the default for groups that do not set their own (``param_groups`` sets both).
    """
    groups = list(param_groups)
    on_cuda = all(p.is_cuda for p in _all_params(groups))
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)


def param_groups(model, weight_decay, no_decay=NO_DECAY):
    """Split trainable parameters into [decayed, not decayed] optimizer groups.

    A parameter is not decayed when its name contains any string in ``no_decay``. Frozen
    parameters (requires_grad=False) are left out; tied parameters appear once, under the first
    name ``named_parameters`` reports.
    """
    decay, no_decay_params = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(key in name for key in no_decay):
            no_decay_params.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay_params, "weight_decay": 0.0}]


def _check_schedule_args(warmup_proportion, total_steps):
    if total_steps < 1:
        raise ValueError(
            f"total_steps must be >= 1, got {total_steps}; check that the training set holds at "
            "least one full batch (batch size x gradient accumulation steps).")
    if not 0.0 <= warmup_proportion <= 1.0:
        raise ValueError(f"warmup_proportion must be in [0, 1], got {warmup_proportion}.")


def _progress(step, warmup_proportion, total_steps):
    _check_schedule_args(warmup_proportion, total_steps)
    return step / total_steps


def poly_warmup_factor(step, warmup_proportion, total_steps, degree=0.5):
    """NVIDIA's PolyWarmUpScheduler factor at optimizer step ``step`` (the first update is step 1).

    With p = step / total_steps and w = warmup_proportion: p / w while p < w, then
    max(1 - p, 0) ** degree.
    """
    progress = _progress(step, warmup_proportion, total_steps)
    if progress < warmup_proportion:
        return progress / warmup_proportion
    return max(1.0 - progress, 0.0) ** degree


def linear_warmup_factor(step, warmup_proportion, total_steps):
    """NVIDIA's LinearWarmUpScheduler factor at optimizer step ``step`` (the first update is step 1).

    With p = step / total_steps and w = warmup_proportion: p / w while p < w, then a straight
    line from 1 at p = w to 0 at p = 1, i.e. max((p - 1) / (w - 1), 0).
    """
    progress = _progress(step, warmup_proportion, total_steps)
    if progress < warmup_proportion:
        return progress / warmup_proportion
    if warmup_proportion == 1.0:
        return 0.0  # warm-up fills the run; only steps at or past the end get here
    return max((1.0 - progress) / (1.0 - warmup_proportion), 0.0)


class _StepShiftedLambdaLR(LambdaLR):
    """LambdaLR whose lambda sees the 1-based index of the next update, and whose resume restores lr.

    LambdaLR evaluates its lambda at last_epoch = 0 on construction and after k scheduler steps
    at k, while the update about to run is number k + 1; the shift makes update n use factor(n).
    """

    def __init__(self, optimizer, factor):
        super().__init__(optimizer, lambda completed_steps: factor(completed_steps + 1))

    def load_state_dict(self, state_dict):
        """Restores the position in the schedule; the base learning rates stay this run's,
        so a resume with a new --learning_rate uses it (as NVIDIA's does)."""
        base_lrs = self.base_lrs
        super().load_state_dict(state_dict)
        self.base_lrs = base_lrs
        self._last_lr = [base_lr * factor(self.last_epoch)
                         for base_lr, factor in zip(base_lrs, self.lr_lambdas)]
        # Write the learning rates back, so the optimizer is right whether its own state was
        # loaded before or after this scheduler.
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def poly_warmup_schedule(optimizer, warmup_proportion, total_steps, degree=0.5):
    """Pre-training schedule: update n runs with base_lr * poly_warmup_factor(n, ...).

    Call ``scheduler.step()`` after each ``optimizer.step()``.
    """
    _check_schedule_args(warmup_proportion, total_steps)
    return _StepShiftedLambdaLR(
        optimizer, lambda step: poly_warmup_factor(step, warmup_proportion, total_steps, degree))


def linear_warmup_schedule(optimizer, warmup_proportion, total_steps):
    """Fine-tuning schedule: update n runs with base_lr * linear_warmup_factor(n, ...).

    Call ``scheduler.step()`` after each ``optimizer.step()``.
    """
    _check_schedule_args(warmup_proportion, total_steps)
    return _StepShiftedLambdaLR(
        optimizer, lambda step: linear_warmup_factor(step, warmup_proportion, total_steps))
