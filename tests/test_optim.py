"""fercli.train.optim: gradient centralization (eq. 8-9, 12) and the optimizers by name, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from fercli.errors import FerError
from fercli.model.networks import build_model
from fercli.train.config import make_train_config, validate_config
from fercli.train.optim import (
    OPTIMIZER_NAMES,
    SGDGC,
    AdamGC,
    AdamWGC,
    FlatGC,
    build_optimizer,
    centralize_gradient,
    centralize_gradient_,
    centralized_gradients,
    graph_capturable,
    set_lr,
    use_tensor_lr,
)
from fercli.train.runs import _param_groups

D = torch.float64


def gc_reference(g: torch.Tensor, min_dim: int = 2) -> torch.Tensor:
    """Test-local eq. (8)-(9), written independently of fercli.train.optim."""
    if g.dim() < min_dim:
        return g.clone()
    return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)


def unit_sums(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)  # e^T t per output unit


def tiny_model(seed: int = 0) -> nn.Module:
    """Conv (4-D), BatchNorm (1-D), Linear (2-D) + biases: every kind of parameter GC meets."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)
    ).to(D)


def random_loss(model: nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 2, 4, 4, generator=g, dtype=D)
    w = torch.randn(5, 3, generator=g, dtype=D)
    return (model(x) * w).sum()


def random_grads() -> list[torch.Tensor]:
    torch.manual_seed(0)
    # conv (out, in, k, k), fc (out, in), bias (out,), all with nonzero means
    return [torch.randn(4, 2, 3, 3, dtype=D) + 1, torch.randn(3, 16, dtype=D) - 2, torch.randn(4, dtype=D) + 3]


# -----------------------------------------------------------------------------
# eq. (8)-(9)


def test_centralized_gradient_has_zero_mean_per_output_unit():
    conv, fc, bias = random_grads()
    grads = [conv.clone(), fc.clone(), bias.clone(), None]
    centralize_gradient_(grads)
    for g, raw in zip(grads[:2], (conv, fc), strict=True):
        torch.testing.assert_close(unit_sums(g), torch.zeros(g.shape[0], dtype=D), rtol=0, atol=1e-12)
        torch.testing.assert_close(g, gc_reference(raw))
        assert unit_sums(raw).abs().min() > 1  # it really had a per-unit mean to remove
    torch.testing.assert_close(grads[2], bias, rtol=0, atol=0)  # 1-D: biases, BN untouched
    # out-of-place forms agree
    torch.testing.assert_close(centralize_gradient(conv), grads[0])
    out = centralized_gradients([conv, fc, bias])
    torch.testing.assert_close(out[1], grads[1])
    assert out[2] is bias


def test_conv_only_leaves_fc_weights_untouched():
    conv, fc, bias = random_grads()
    grads = [conv.clone(), fc.clone(), bias.clone()]
    centralize_gradient_(grads, conv_only=True)
    torch.testing.assert_close(grads[0], gc_reference(conv))
    torch.testing.assert_close(grads[1], fc, rtol=0, atol=0)
    torch.testing.assert_close(grads[2], bias, rtol=0, atol=0)
    assert centralize_gradient(fc, conv_only=True) is fc


def test_gc_is_an_idempotent_orthogonal_projection():
    for g in random_grads()[:2]:
        c = centralize_gradient(g)
        torch.testing.assert_close(centralize_gradient(c), c, rtol=0, atol=1e-12)  # P P = P
        # g - P g is orthogonal to P g, unit by unit
        dots = unit_sums((g - c) * c)
        torch.testing.assert_close(dots, torch.zeros_like(dots), rtol=0, atol=1e-10)
        assert not torch.allclose(c, g)


def test_flat_gc_equals_per_tensor_gc_exactly():
    """The batched GC (one buffer, one mean + one subtract per unit size) == eq. (8)-(9) per
    tensor, bit for bit in float64: shapes chosen so that conv and FC weights share a unit
    size (r = 18) and get merged into one block, plus 1-D params it must leave alone."""
    torch.manual_seed(0)
    shapes = [(4, 2, 3, 3), (3, 18), (5,), (6, 8, 1, 1), (2, 18), (7, 5), (3, 1, 3, 3)]
    grads = [torch.randn(*s, dtype=D) + i for i, s in enumerate(shapes)]
    params = [torch.randn(*s, dtype=D) for s in shapes]
    before = [g.clone() for g in grads]
    for wd in (0.0, 0.25):
        flat = FlatGC(grads, conv_only=False, with_all=bool(wd))
        assert len(flat.blocks) == 4  # r = 8, 9, 18 (merged across shapes), 5
        out = flat(grads, params, wd)
        for o, g, p in zip(out, grads, params, strict=True):
            assert torch.equal(o, gc_reference(g + wd * p))
        for g, b in zip(grads, before, strict=True):
            assert torch.equal(g, b)  # never modified in place
    # conv_only: only 4-D kernels
    out = FlatGC(grads, conv_only=True, with_all=False)(grads)
    for o, g in zip(out, grads, strict=True):
        assert torch.equal(o, gc_reference(g, min_dim=4))


def test_flat_gc_handles_channels_last_gradients():
    torch.manual_seed(0)
    g = (torch.randn(8, 4, 3, 3, dtype=D) + 2).contiguous(memory_format=torch.channels_last)
    out = FlatGC([g], conv_only=False, with_all=False)([g])
    assert out[0].stride() == g.stride()  # fused optimizers see the grad's own layout
    torch.testing.assert_close(out[0], gc_reference(g), rtol=0, atol=1e-13)


def test_gc_step_on_resnet34_is_batched_not_per_tensor():
    """GC of a whole ResNet34 (36 conv + 1 FC weights) in a handful of mean kernels."""
    from torch.utils._python_dispatch import TorchDispatchMode


    model = build_model("resnet34", 7, pretrained=False)
    opt = build_optimizer("adamw-gc", model, lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)

    class Count(TorchDispatchMode):
        means = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.mean:
                Count.means += 1
            return func(*args, **(kwargs or {}))

    with Count():
        opt.step()
    weights = sum(p.dim() >= 2 for p in model.parameters())
    assert weights > 30 and 0 < Count.means <= 12, (weights, Count.means)


def test_tensor_lr_follows_set_lr_in_place():
    model = tiny_model().float()
    opt = build_optimizer("adamw-gc", model, lr=1e-3)
    assert graph_capturable(opt)
    use_tensor_lr(opt, True)
    lr = opt.param_groups[0]["lr"]
    set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(5e-4)
    use_tensor_lr(opt, False)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and not torch.is_tensor(opt.param_groups[0]["lr"])
    assert not graph_capturable(build_optimizer("sgd-gc", model, lr=1e-3))


# -----------------------------------------------------------------------------
# eq. (12): with SGD (+ momentum, + coupled decay), e^T (W - W0) stays 0 per output unit


def _sgd_drift(optimizer_cls, steps: int = 100) -> float:
    model = tiny_model()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = optimizer_cls(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    for step in range(steps):
        opt.zero_grad()
        random_loss(model, seed=step).backward()
        opt.step()
    drift = 0.0
    for p, p0 in zip(model.parameters(), w0, strict=True):
        if p.dim() >= 2:
            assert not torch.allclose(p, p0)  # the weights did move
            drift = max(drift, unit_sums(p.detach() - p0).abs().max().item())
    return drift


def test_sgd_gc_keeps_weight_sums_per_unit_fixed_eq12():
    assert _sgd_drift(SGDGC) < 1e-10


def test_sgd_without_gc_does_not_keep_weight_sums_fixed():
    assert _sgd_drift(torch.optim.SGD) > 1e-3  # control for the test above


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_sgd_gc_conv_only_centralizes_conv_but_not_fc_updates(wd):
    model = tiny_model()
    conv, fc = model[0].weight, model[4].weight
    c0, f0 = conv.detach().clone(), fc.detach().clone()
    opt = SGDGC([{"params": [conv]}], lr=0.05, momentum=0.9, weight_decay=wd, gc_conv_only=True)
    opt.add_param_group({"params": [fc]})  # inherits gc_conv_only from the defaults
    assert all(g["gc_conv_only"] for g in opt.param_groups)
    for step in range(10):
        opt.zero_grad()
        random_loss(model, seed=step).backward()
        opt.step()
    assert unit_sums(conv.detach() - c0).abs().max() < 1e-12
    assert unit_sums(fc.detach() - f0).abs().max() > 1e-3


# -----------------------------------------------------------------------------
# GC optimizers == the torch optimizer fed centralised gradients


def spy_on_base_steps(monkeypatch) -> list[str]:
    """Record which torch implementation (fused / foreach / for-loop) each base step runs."""
    import torch.optim.adam as adam_mod
    import torch.optim.sgd as sgd_mod

    calls: list[str] = []
    for mod, kind in ((adam_mod, "adam"), (sgd_mod, "sgd")):
        for impl, fn in (("fused", f"_fused_{kind}"), ("foreach", f"_multi_tensor_{kind}"),
                         ("for-loop", f"_single_tensor_{kind}")):
            real = getattr(mod, fn)

            def wrapper(*a, _real=real, _impl=impl, **k):
                calls.append(_impl)
                return _real(*a, **k)

            monkeypatch.setattr(mod, fn, wrapper)
    return calls


@pytest.mark.parametrize("impl", ["fused", "foreach", "for-loop"])
@pytest.mark.parametrize(
    "name,base,coupled",
    [("adamw-gc", torch.optim.AdamW, False), ("adam-gc", torch.optim.Adam, True), ("sgd-gc", torch.optim.SGD, True)],
)
def test_gc_optimizer_equals_base_optimizer_on_centralized_gradients(name, base, coupled, impl, monkeypatch):
    if impl == "fused" and base is torch.optim.SGD:
        pytest.skip("build_optimizer never fuses SGD")
    wd, lr = 0.1, 1e-2
    ours, ref, plain = tiny_model(), tiny_model(), tiny_model()
    opt = build_optimizer(name, ours, lr=lr, weight_decay=wd, impl=impl)
    foreach = impl == "foreach"
    calls = spy_on_base_steps(monkeypatch)
    extra = {"momentum": 0.9} if base is torch.optim.SGD else {}
    # Coupled decay goes into the gradient before GC, so the reference base gets none of it.
    ref_opt = base(ref.parameters(), lr=lr, weight_decay=0.0 if coupled else wd, foreach=foreach, **extra)
    plain_opt = base(plain.parameters(), lr=lr, weight_decay=wd, foreach=foreach, **extra)
    for step in range(5):
        for m, o in ((ours, opt), (ref, ref_opt), (plain, plain_opt)):
            o.zero_grad()
            random_loss(m, seed=step).backward()
        raw = [p.grad.clone() for p in ours.parameters()]
        for p in ref.parameters():
            g = p.grad + wd * p.detach() if coupled else p.grad
            p.grad = gc_reference(g)
        calls.clear()
        opt.step()
        assert calls == [impl]  # the requested implementation really ran (fused does not override it)
        ref_opt.step()
        plain_opt.step()
        for p, g in zip(ours.parameters(), raw, strict=True):  # the GC step leaves p.grad alone
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
        assert all(g["weight_decay"] == wd for g in opt.param_groups)  # restored after the step
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    # Control: GC does change the trajectory.
    assert not all(torch.allclose(p, q) for p, q in zip(ours.parameters(), plain.parameters(), strict=True))


@pytest.mark.parametrize("name", ["adamw-gc", "adam-gc", "sgd-gc"])
def test_gc_optimizer_state_dict_round_trip_continues_identically(name):
    model = tiny_model()
    opt = build_optimizer(name, model, lr=1e-2, weight_decay=0.05, gc_conv_only=True)
    for step in range(3):
        opt.zero_grad()
        random_loss(model, seed=step).backward()
        opt.step()
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert all(g["weight_decay"] == 0.05 and g["gc_conv_only"] for g in saved_opt["param_groups"])

    resumed = tiny_model(seed=1)
    resumed.load_state_dict(saved_model)
    # Built with gc_conv_only=False: load_state_dict must bring back True with the moments.
    resumed_opt = build_optimizer(name, resumed, lr=1e-2, weight_decay=0.05, gc_conv_only=False)
    resumed_opt.load_state_dict(saved_opt)
    assert all(g["gc_conv_only"] for g in resumed_opt.param_groups)
    for step in range(3, 6):
        for m, o in ((model, opt), (resumed, resumed_opt)):
            o.zero_grad()
            random_loss(m, seed=step).backward()
            o.step()
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_gc_step_skips_params_without_gradients():
    model = tiny_model()
    opt = AdamWGC(model.parameters(), lr=1e-2, weight_decay=0.0, foreach=True)
    fc = model[4]
    before = fc.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    model[0](torch.randn(2, 2, 4, 4, dtype=D)).sum().backward()  # only the conv gets grads
    opt.step()
    assert fc.weight.grad is None
    torch.testing.assert_close(fc.weight, before, rtol=0, atol=0)
    assert not torch.equal(model[0].weight.grad, gc_reference(model[0].weight.grad))  # grad left raw


def test_gc_optimizer_with_closure_returns_the_loss():
    model = tiny_model()
    opt = SGDGC(model.parameters(), lr=0.1)
    w0 = model[4].weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = random_loss(model, seed=0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    torch.testing.assert_close(unit_sums(model[4].weight.detach() - w0), torch.zeros(3, dtype=D), rtol=0, atol=1e-12)


# -----------------------------------------------------------------------------
# The registry


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_builds_and_steps_only_trainable_params(name):
    model = tiny_model()
    model[1].requires_grad_(False)  # a frozen part must not be handed to the optimizer
    opt = build_optimizer(name, model, lr=1e-3, weight_decay=1e-4)
    handed = {id(p) for g in opt.param_groups for p in g["params"]}
    assert handed == {id(p) for p in model.parameters() if p.requires_grad}
    assert name.endswith("-gc") == isinstance(opt, (SGDGC, AdamGC, AdamWGC))
    before = [p.detach().clone() for p in model.parameters()]
    random_loss(model, seed=0).backward()
    opt.step()
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)]
    assert moved == [p.requires_grad for p in model.parameters()]


def test_build_optimizer_accepts_param_groups():
    model = tiny_model()
    groups = [{"params": model[0].parameters(), "lr": 1e-2}, {"params": model[4].parameters()}]
    opt = build_optimizer("adamw-gc", groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-3]
    assert all("gc_conv_only" in g for g in opt.param_groups)


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(FerError) as e:
        build_optimizer("lion", tiny_model(), lr=1e-3)
    assert "lion" in str(e.value) and all(n in str(e.value) for n in OPTIMIZER_NAMES)


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": 1e-3, "weight_decay": -1.0}, {"lr": 1e-3, "momentum": 1.5}])
def test_bad_hyperparameters_are_fer_errors(kwargs):
    with pytest.raises(FerError):
        build_optimizer("sgd-gc", tiny_model(), **kwargs)


def test_nothing_trainable_is_a_fer_error():
    model = tiny_model().requires_grad_(False)
    with pytest.raises(FerError, match="trainable"):
        build_optimizer("adam", model, lr=1e-3)


@pytest.mark.parametrize("no_decay", [False, True])
def test_trunk_lr_scales_the_trunks_groups_only(no_decay):
    """--trunk-lr F: every trunk parameter sits in a group whose lr is F × the schedule's, every
    other parameter at the full lr; each parameter in exactly one group; and Adam's first step
    (≈ lr · sign(grad)) moves a trunk weight F times as far as the head's."""

    torch.manual_seed(0)
    model = build_model("resnet34", 7)
    cfg = make_train_config(None, model="resnet34", trunk_lr=0.1, no_decay_bn_bias=no_decay)
    opt = build_optimizer("adam-gc", _param_groups(model, cfg), lr=1e-3)
    set_lr(opt, 1e-3)
    trunk = {id(p) for p in model.trunk.parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each once
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= trunk or not ids & trunk  # a group is all trunk or all head
        assert g["lr"] == pytest.approx(1e-4 if ids <= trunk else 1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.rand(4, 1, 48, 48)).logsumexp(1).sum().backward()
    opt.step()
    step = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert step["trunk.layer1.0.conv1.weight"] == pytest.approx(1e-4, rel=0.05)
    assert step["fc.weight"] == pytest.approx(1e-3, rel=0.05)


def test_trunk_lr_one_keeps_the_single_group_and_bad_values_are_refused():

    model = build_model("resnet34", 7)
    assert _param_groups(model, make_train_config(None, model="resnet34")) is model
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(FerError, match="--trunk-lr"):
            validate_config(make_train_config(None, trunk_lr=bad))
