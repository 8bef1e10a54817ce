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
  On accelerators each stage is one multi-tensor pass over all parameters, whatever their
  number, with no host sync: the per-tensor step sizes (-lr * trust ratio) are expanded to one
  value per element, so that the last pass is a single addcmul (the transient index and values
  take the memory that the clipped gradients have just freed). On the CPU, where LAMB is
  memory-bound and reading a scalar costs nothing, each tensor goes through two passes:
  moments, update and the norms of the trust ratio, then the weight update and its copy to
  the model's low-precision weights. In models of COMPILE_MIN_MODEL elements and more,
  tensors of COMPILE_MIN_ELEMENTS and more take each pass as one inductor-compiled loop
  (torch.compile, once per process; where compiling fails, a warning and the eager passes);
  the others run the same function eagerly, a block of elements (``CPU_BLOCK``) at a time,
  so that every array's block stays in the cache through all of its ops. The bias
  corrections are folded into host scalars, as torch's Adam does, so results differ from
  apex's kernel in the last bits only.
- ``make_lamb`` still picks apex's FusedLAMB when apex is installed with its compiled extension
  (amp_C; a Python-only build is not enough) and the parameters are on CUDA.
- LAMB counts steps per parameter (PyTorch's convention) where apex counts per group; they differ
  only for a parameter that has no gradient on some steps, whose bias correction then follows its
  own update count. Checkpoints record which LAMB wrote them (``lamb_kind``) and
  ``load_lamb_state`` moves the count between the two, so a run resumes with or without apex
  (NVIDIA's cannot); towards FusedLAMB a group takes the largest count of its parameters.
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

import functools
import importlib
import math
from itertools import chain

import torch
from torch.optim.lr_scheduler import LambdaLR

from utils import CompiledOrEager, logger

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
        self._repeats_cache = {}  # (device, tensor sizes) -> the sizes on that device
        self._scratch = {}  # dtype -> the CPU passes' update buffer (_cpu_scratch)

    @torch.no_grad()
    def step(self, closure=None):
        """Apply one LAMB update to every parameter that has a gradient; returns closure's loss.

        Each stage is one multi-tensor (foreach) pass over all parameters of a (device, dtype)
        bucket, whatever their number, and nothing is read back to the host.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets = self._collect_buckets()
        if not buckets:
            return loss
        clip_divisor = self._clip_divisor(buckets)
        for bucket in buckets:
            self._update_bucket(bucket, clip_divisor)
        return loss

    def _collect_buckets(self):
        """The parameters that have gradients, by (device, dtype) for the foreach kernels;
        within a bucket each group's parameters are consecutive, spans[i] = (group, start, end).

        Initialises missing state and advances each parameter's step count.
        """
        buckets = {}
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(
                        f"LAMB got a sparse gradient for a parameter of shape "
                        f"{tuple(param.shape)}; it needs dense gradients (use a dense "
                        "nn.Embedding, sparse=False).")
                state = self.state[param]
                if not state:
                    _init_state(state, param)
                state["step"] += 1
                bucket = buckets.setdefault((param.device, param.dtype), _empty_bucket())
                count = len(bucket["params"])
                if not bucket["spans"] or bucket["spans"][-1][0] is not group:
                    bucket["spans"].append([group, count, count])
                bucket["spans"][-1][2] = count + 1
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

    def _update_bucket(self, bucket, clip_divisor):
        """The LAMB update of one (device, dtype) bucket: p += step_size * u, where step_size
        is -lr * trust_ratio per tensor (see the module docstring for the two ways it is
        applied)."""
        masters = bucket["masters"]
        if host_reads_are_free(masters[0].device):
            _blocked_lamb_update(bucket, clip_divisor, self._cpu_scratch(masters))
            return
        grads = _scaled_grads(bucket["grads"], masters[0].dtype, clip_divisor)
        updates = []
        for group, start, end in bucket["spans"]:
            updates += _adam_updates(group, grads[start:end], bucket["exp_avgs"][start:end],
                                     bucket["exp_avg_sqs"][start:end], masters[start:end],
                                     bucket["steps"][start:end])
        del grads  # the clipped copies: memory for what follows
        step_sizes = _step_sizes(bucket["spans"], masters, updates)
        _add_scaled_expanded(masters, updates, step_sizes,
                             self._repeats([m.numel() for m in masters], step_sizes.device))
        if masters[0] is not bucket["params"][0]:
            torch._foreach_copy_(bucket["params"], masters)

    def _cpu_scratch(self, masters):
        """A buffer for the updates of a CPU bucket, as large as its largest tensor, kept
        between steps: a fresh one the size of BERT-base's word embeddings (94 MB) comes as
        new pages from the kernel, faulted in again on every step."""
        size, dtype = max(master.numel() for master in masters), masters[0].dtype
        if dtype not in self._scratch or self._scratch[dtype].numel() < size:
            self._scratch[dtype] = torch.empty(size, dtype=dtype)
        return self._scratch[dtype]

    def _repeats(self, numels, device):
        """The tensor sizes as a tensor on `device`, kept between steps: made once, it costs
        no host-to-device copy per step. int32 where it fits (repeat_interleave builds an
        index of that dtype, one entry per parameter element)."""
        key = (device, tuple(numels))
        if key not in self._repeats_cache:
            dtype = torch.int32 if sum(numels) < 2**31 else torch.int64
            self._repeats_cache[key] = torch.tensor(numels, dtype=dtype).to(device)
        return self._repeats_cache[key]

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
    return {key: [] for key in ("params", "grads", "exp_avgs", "exp_avg_sqs", "masters", "steps",
                                "spans")}


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


def _adam_updates(group, grads, exp_avgs, exp_avg_sqs, masters, steps):
    """Advances one group's moments; returns its updates u = m_hat / (sqrt(v_hat) + eps) + wd p.

    The bias corrections are folded into per-tensor host scalars, as torch's Adam does:
    u = wd p + (sqrt(bc2) / bc1) m / (sqrt(v) + eps sqrt(bc2)), two passes fewer over v.
    """
    beta1, beta2 = group["betas"]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = beta1 m + (1 - beta1) g
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    sqrt_bias_correction2 = [math.sqrt(1 - beta2 ** step) for step in steps]
    step_scales = [root / (1 - beta1 ** step) for root, step in zip(sqrt_bias_correction2, steps)]
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, [group["eps"] * root for root in sqrt_bias_correction2])
    updates = torch._foreach_mul(masters, group["weight_decay"])
    torch._foreach_addcdiv_(updates, exp_avgs, denominators, step_scales)
    return updates


CPU_BLOCK = 2**17  # elements: a block of each array LAMB touches (5 x 512 KB) stays in cache
# In models from COMPILE_MIN_MODEL elements up, every tensor too large to share a block
# takes inductor-compiled passes, one fused loop each: BERT-base's fp32 LAMB step took 199
# ms against 387 for the blocked eager ops and 628 for separate norm and update passes, the
# laptop recipe's (4-layer/256, 11.3M) 29 ms against 63-75 eager, and all-MiniLM's shape
# (6-layer/384, 22.9M) 55 ms against 69 when only tensors from 2**18 up were compiled (the
# 2-core benchmark machine). The compile (16 s cold, 3.4 s from inductor's on-disk cache,
# once per process) pays for itself within some 500 steps at the smallest size compiled.
# Tensors that share a block stay eager (compiled one by one they measured no faster: a
# compiled call costs some 70 us); smaller models (tests, the quick start's 4.5M) never
# wait for a compiler.
COMPILE_MIN_ELEMENTS = CPU_BLOCK
COMPILE_MIN_MODEL = 2**23


def _blocked_lamb_update(bucket, clip_divisor, scratch):
    """The whole LAMB update of a CPU bucket, one tensor at a time in two passes.

    The first pass advances the moments and writes the update u into a scratch buffer,
    summing the squares of p and u as it goes (the trust ratio needs no pass of its own);
    the second adds step_size * u to the master weights and copies them into the model's
    low-precision weights. Memory sees about 44 bytes per fp32 parameter (the clip's
    gradient norm included) where separate norm, add and copy passes took 52: LAMB is
    memory-bound on a CPU. Large tensors go through each pass as one compiled loop
    (`_cpu_passes`); the others a block of elements at a time (CPU_BLOCK), so that a block
    of every array stays in the cache through all the eager ops of a pass; tensors smaller
    than a block share one, several at a time (`_multi_tensor_update`). The updates go to
    `scratch`, a flat buffer the size of the largest tensor, not of the model.
    """
    inverse_divisor = 1.0 if clip_divisor is None else 1.0 / clip_divisor.item()
    masters = bucket["masters"]
    large_model = sum(master.numel() for master in masters) >= COMPILE_MIN_MODEL
    for group, start, end in bucket["spans"]:
        indices = range(start, end)
        small = [i for i in indices if _fits_a_block(masters[i])]
        for chunk in _chunks_of_a_block(small, masters):
            _multi_tensor_update(bucket, chunk, group, clip_divisor)
        for index in (i for i in indices if not _fits_a_block(masters[i])):
            master, param = masters[index], bucket["params"][index]
            update = scratch[:master.numel()].view(master.shape)
            adam_pass, apply_pass = _cpu_passes(master, large_model)
            squares = adam_pass(
                (bucket["grads"][index], bucket["exp_avgs"][index],
                 bucket["exp_avg_sqs"][index], master, update),
                _adam_scalars(group, bucket["steps"][index], inverse_divisor))
            ratio = _trust_ratio(*squares) if group["weight_decay"] != 0 else 1.0
            apply_pass((master, update, param), torch.tensor(-group["lr"] * ratio))


def _fits_a_block(tensor):
    return tensor.numel() < CPU_BLOCK and tensor.is_contiguous()


def _chunks_of_a_block(indices, masters):
    """The indices in consecutive runs whose tensors hold at most CPU_BLOCK elements in all."""
    chunk, size = [], 0
    for index in indices:
        if chunk and size + masters[index].numel() > CPU_BLOCK:
            yield chunk
            chunk, size = [], 0
        chunk.append(index)
        size += masters[index].numel()
    if chunk:
        yield chunk


def _multi_tensor_update(bucket, indices, group, clip_divisor):
    """The LAMB update of several small tensors of one group, a block of elements in all,
    with multi-tensor ops: BERT-base's 130 biases and LayerNorm vectors took some 25 ms of
    per-tensor op overhead (the 2-core benchmark machine) as blocks of their own."""
    def pick(key):
        return [bucket[key][i] for i in indices]

    masters = pick("masters")
    grads = _scaled_grads(pick("grads"), masters[0].dtype, clip_divisor)
    updates = _adam_updates(group, grads, pick("exp_avgs"), pick("exp_avg_sqs"), masters,
                            pick("steps"))
    squares = torch.stack(torch._foreach_norm([*masters, *updates])).square().tolist()
    ratios = ([_trust_ratio(p, u) for p, u in zip(squares[:len(masters)], squares[len(masters):])]
              if group["weight_decay"] != 0 else [1.0] * len(masters))
    torch._foreach_mul_(updates, [-group["lr"] * ratio for ratio in ratios])
    torch._foreach_add_(masters, updates)
    params = pick("params")
    if params[0] is not masters[0]:
        torch._foreach_copy_(params, masters)


def _adam_scalars(group, step, inverse_divisor):
    """The scalars of _adam_block as 0-d fp32 tensors, not floats: the compiled passes are
    then not recompiled for each step's bias corrections. The bias corrections are folded
    in as in _adam_updates."""
    beta1, beta2 = group["betas"]
    root = math.sqrt(1 - beta2 ** step)
    values = (inverse_divisor, 1 - beta1, beta2, 1 - beta2, group["eps"] * root,
              root / (1 - beta1 ** step), group["weight_decay"])
    return torch.tensor(values).unbind()


def _adam_block(grad, exp_avg, exp_avg_sq, master, update, scalars):
    """Moments and update u = m_hat / (sqrt(v_hat) + eps) + wd p of one tensor or block
    (written into `update`); returns the sums of squares of p and of u."""
    inverse_divisor, one_minus_beta1, beta2, one_minus_beta2, eps_root, step_scale, decay = scalars
    grad = grad.to(master.dtype) * inverse_divisor
    exp_avg.lerp_(grad, one_minus_beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad * one_minus_beta2)
    update.copy_(master * decay + exp_avg * step_scale / (exp_avg_sq.sqrt() + eps_root))
    return master.square().sum(), update.square().sum()


def _apply_block(master, update, param, step_size):
    """master += step_size * update, copied into the model's weights when they are not
    the master copy."""
    master.add_(update * step_size)
    if param is not master:
        param.copy_(master)


def _eager_adam_pass(tensors, scalars):
    squares = [_adam_block(*block, scalars) for block in _blocks(tensors)]
    return tuple(sum(values).item() for values in zip(*squares))


def _eager_apply_pass(tensors, step_size):
    master, _, param = tensors
    for master_block, update_block, param_block in _blocks(tensors):
        _apply_block(master_block, update_block,
                     master_block if param is master else param_block, step_size)


def _compiled_adam_pass(tensors, scalars):
    squares = _ADAM_BLOCK(*(t.view(-1) for t in tensors), scalars)
    return tuple(float(value) for value in squares)  # 0-d tensors, or the fallback's floats


def _compiled_apply_pass(tensors, step_size):
    master, update, param = (t.view(-1) for t in tensors)
    _APPLY_BLOCK(master, update, master if tensors[2] is tensors[0] else param, step_size,
                 compile=_ADAM_BLOCK.error is None)  # one warning where compiling fails


def _cpu_passes(master, large_model):
    """(adam pass, apply pass) for a tensor: compiled for large contiguous ones of a large
    model where inductor works here, else the blocked eager ones."""
    if (not large_model or master.numel() < COMPILE_MIN_ELEMENTS
            or not master.is_contiguous() or _ADAM_BLOCK.error is not None
            or _APPLY_BLOCK.error is not None):
        return _eager_adam_pass, _eager_apply_pass
    return _compiled_adam_pass, _compiled_apply_pass


def _blocked_adam_block(grad, exp_avg, exp_avg_sq, master, update, scalars):
    return _eager_adam_pass((grad, exp_avg, exp_avg_sq, master, update), scalars)


def _blocked_apply_block(master, update, param, step_size):
    _eager_apply_pass((master, update, param), step_size)


# Where compiling fails, the tensor at hand and all later ones take the blocked eager passes.
_ADAM_BLOCK = CompiledOrEager(_adam_block, "LAMB's CPU moments pass", eager=_blocked_adam_block)
_APPLY_BLOCK = CompiledOrEager(_apply_block, "LAMB's CPU update pass",
                               eager=_blocked_apply_block)


def _trust_ratio(param_square, update_square):
    """||p|| / ||u|| from their squares, or 1.0 where either is zero (as _step_sizes)."""
    if param_square > 0 and update_square > 0:
        return math.sqrt(param_square / update_square)
    return 1.0


def _blocks(tensors):
    """Aligned CPU_BLOCK-element slices of same-sized tensors (whole, if one is strided)."""
    if not all(t.is_contiguous() for t in tensors):
        yield tensors
        return
    flat = [t.view(-1) for t in tensors]
    for begin in range(0, flat[0].numel(), CPU_BLOCK):
        yield tuple(t[begin:begin + CPU_BLOCK] for t in flat)


def _step_sizes(spans, masters, updates):
    """-lr * trust_ratio for every tensor, as one 1-d tensor on the device.

    trust_ratio = ||p|| / ||u||, or 1.0 where either norm is zero; layer-wise adaptation only
    where weights decay: biases and LayerNorm parameters take a plain Adam-style step, as in
    apex with use_nvlamb=False.
    """
    param_norms = torch.stack(torch._foreach_norm(masters))
    update_norms = torch.stack(torch._foreach_norm(updates))
    trust_ratios = torch.where((param_norms > 0) & (update_norms > 0),
                               param_norms / update_norms, 1.0)
    sizes = []
    for group, start, end in spans:
        if group["weight_decay"] != 0:
            sizes.append(trust_ratios[start:end] * -group["lr"])
        else:
            sizes.append(torch.full((end - start,), -group["lr"], dtype=trust_ratios.dtype,
                                    device=trust_ratios.device))
    return torch.cat(sizes)


def host_reads_are_free(device):
    """Whether Python may read a tensor on `device` without waiting for the device: on the
    CPU only. (The tests of the accelerator paths, which run on the CPU, say no.)"""
    return device.type == "cpu"


def _add_scaled_expanded(masters, updates, step_sizes, repeats):
    """masters[i] += step_sizes[i] * updates[i] on an accelerator without a host sync: the
    sizes expanded to one value per element (repeats: each tensor's numel, on the device),
    then one multi-tensor addcmul."""
    numels = [master.numel() for master in masters]
    per_element = torch.repeat_interleave(step_sizes, repeats, output_size=sum(numels))
    torch._foreach_addcmul_(masters, updates, [
        values.view(master.shape) for values, master in zip(per_element.split(numels), masters)])


@functools.cache
def _apex_fused_lamb():
    """apex's FusedLAMB class where apex is installed with its compiled extension, else None;
    decided once per process and logged.

    A Python-only apex build imports fine and fails only when a FusedLAMB is constructed (it
    lacks amp_C), so the extension itself is what is checked.
    """
    try:
        from apex.optimizers import FusedLAMB
    except ImportError:
        logger.debug("LAMB: optimization.LAMB (apex is not installed)")
        return None
    try:
        importlib.import_module("amp_C")
    except ImportError as e:
        logger.warning("LAMB: optimization.LAMB; apex is installed without its compiled "
                       "extension amp_C (%s): rebuild apex with --cuda_ext for FusedLAMB", e)
        return None
    logger.info("LAMB: apex FusedLAMB on CUDA (amp_C found)")
    return FusedLAMB


def _all_params(groups):
    """The parameter tensors in a list of tensors or of parameter-group dicts."""
    return [p for group in groups for p in (group["params"] if isinstance(group, dict) else [group])]


def make_lamb(param_groups, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0,
              prefer_apex=True):
    """The pre-training optimizer: apex FusedLAMB on CUDA when installed, else our LAMB.

    Both are configured to the same math (see LAMB). Their state dicts differ in where the
    step count lives: checkpoints record `lamb_kind`, and `load_lamb_state` converts.
    """
    groups = list(param_groups)
    fused_lamb = _apex_fused_lamb() if prefer_apex else None
    if fused_lamb is not None and all(p.is_cuda for p in _all_params(groups)):
        return fused_lamb(groups, lr=lr, bias_correction=True, betas=betas, eps=eps,
                          weight_decay=weight_decay, adam_w_mode=True, grad_averaging=True,
                          max_grad_norm=max_grad_norm, use_nvlamb=False)
    return LAMB(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                max_grad_norm=max_grad_norm)


# ----------------------------------------------------------------------------- LAMB state

FUSED_LAMB = "apex.optimizers.FusedLAMB"
OUR_LAMB = "optimization.LAMB"
# Group entries of apex's FusedLAMB that ours does not have: settings ours fixes (or keeps on
# the optimizer, max_grad_norm) and the step count, which ours keeps per parameter.
_FUSED_ONLY_GROUP_KEYS = ("bias_correction", "grad_averaging", "max_grad_norm", "step")


def lamb_kind(optimizer):
    """The name of make_lamb's optimizer kind, as checkpoints record it."""
    if isinstance(optimizer, LAMB):
        return OUR_LAMB
    fused_lamb = _apex_fused_lamb()
    if fused_lamb is not None and isinstance(optimizer, fused_lamb):
        return FUSED_LAMB
    raise ValueError(f"{type(optimizer).__name__} is not one of make_lamb's optimizers "
                     f"({OUR_LAMB}, {FUSED_LAMB})")


def state_dict_kind(state_dict):
    """Which LAMB wrote an optimizer state dict, from its shape (checkpoints written before
    the kind was recorded): FusedLAMB's groups carry bias_correction."""
    groups = state_dict["param_groups"]
    return FUSED_LAMB if groups and all("bias_correction" in g for g in groups) else OUR_LAMB


def load_lamb_state(optimizer, state_dict, kind=None):
    """Loads a state dict written by either LAMB kind (`kind`, else read from its shape) into
    `optimizer`, of either kind. apex's FusedLAMB counts steps per parameter group
    (group['step']), ours per parameter (state['step']); the count is carried across, so
    bias correction continues where it was instead of failing (KeyError 'step') or
    silently starting over."""
    source, target = kind or state_dict_kind(state_dict), lamb_kind(optimizer)
    if source not in (FUSED_LAMB, OUR_LAMB):
        raise ValueError(f"the checkpoint's optimizer state was written by {source!r}, which "
                         f"cannot be resumed here (only {OUR_LAMB} or {FUSED_LAMB}): start "
                         f"from its weights with --init_checkpoint instead")
    if source != target:
        if len(state_dict["param_groups"]) != len(optimizer.param_groups):
            raise ValueError(f"the checkpoint's optimizer has {len(state_dict['param_groups'])} "
                             f"parameter groups, this run's {len(optimizer.param_groups)}")
        state_dict = (_fused_to_ours(state_dict) if source == FUSED_LAMB
                      else _ours_to_fused(state_dict, optimizer.param_groups))
        logger.info("optimizer state written by %s converted for %s", source, target)
    optimizer.load_state_dict(state_dict)


def _fused_to_ours(state_dict):
    """FusedLAMB's state dict for our LAMB: the group's step count onto each parameter."""
    groups, state = [], {}
    for group in state_dict["param_groups"]:
        if not group.get("bias_correction", True) or not group.get("grad_averaging", True):
            raise ValueError("the checkpoint's FusedLAMB ran without bias correction or gradient "
                             "averaging, which optimization.LAMB does not implement: resume it "
                             "where apex is installed")
        step = int(group.get("step", 0))  # an int in FusedLAMB, a tensor in FusedLAMBAMP
        groups.append({k: v for k, v in group.items() if k not in _FUSED_ONLY_GROUP_KEYS})
        for index in group["params"]:
            if index in state_dict["state"]:
                state[index] = {**state_dict["state"][index], "step": step}
    return {"state": state, "param_groups": groups}


def _ours_to_fused(state_dict, current_groups):
    """Our LAMB's state dict for FusedLAMB: one step count per group, FusedLAMB's own group
    settings from this run's optimizer, the moments only (FusedLAMB keeps no master copy)."""
    groups, state = [], {}
    for saved, current in zip(state_dict["param_groups"], current_groups):
        saved_states = [state_dict["state"][i] for i in saved["params"] if i in state_dict["state"]]
        steps = sorted({s["step"] for s in saved_states})
        if len(steps) > 1:
            logger.warning("parameters of one optimizer group took different numbers of steps "
                           "(%s); FusedLAMB keeps one count per group: using %d", steps, steps[-1])
        group = {k: v for k, v in current.items() if k not in ("params", "step")}
        group.update(saved)
        if steps:
            group["step"] = steps[-1]
        groups.append(group)
        for index in saved["params"]:
            if index in state_dict["state"]:
                state[index] = {k: state_dict["state"][index][k] for k in ("exp_avg", "exp_avg_sq")}
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- fine-tuning

def make_adamw(param_groups, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
    """The fine-tuning optimizer: torch AdamW, its fused kernel where all parameters are on
    CUDA or all on the CPU, the foreach one elsewhere. On the CPU the fused step of a
    6-layer/384 model (22.9M parameters) took 16 ms against 57 for foreach (the 2-core
    benchmark machine; the weights agreed to 1.5e-8 after 13 steps).

    weight_decay is the default for groups that do not set their own (``param_groups`` sets both).
    """
    groups = list(param_groups)
    devices = {p.device.type for p in _all_params(groups)}
    kernel = {"fused": True} if devices in ({"cuda"}, {"cpu"}) else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kernel)


# ----------------------------------------------------------------------------- groups, schedules

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
