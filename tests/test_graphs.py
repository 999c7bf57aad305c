"""The capturable train step on the CPU: static-shape batches, the wrapped tail, the step's
body against a hand-written step, the warm-up undo a CUDA capture relies on, --compile.

CUDA graph capture itself needs a GPU; everything it is built from runs here.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fercli.data.resident import DeviceSplit, augment_with
from fercli.model import inference
from fercli.train import engine
from fercli.train.optim import build_optimizer

CPU = torch.device("cpu")


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 7))


def tiny_data(n: int = 10, size: int = 12, seed: int = 0) -> DeviceSplit:
    g = torch.Generator().manual_seed(seed)
    return DeviceSplit(torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
                       torch.randint(0, 7, (n,), generator=g))


@pytest.mark.parametrize("n,batch", [(10, 4), (12, 4), (3, 8), (1, 1)])
def test_epoch_batches_are_full_and_cover_every_image(n, batch):
    b = engine.epoch_batches(n, batch, torch.Generator().manual_seed(0), CPU)
    bs = min(batch, n)
    assert b.shape == (-(-n // bs), bs)  # static: every step a full batch
    counts = torch.bincount(b.flatten(), minlength=n)
    assert counts.min() >= 1  # every image at least once
    assert int((counts - 1).sum()) == b.numel() - n < bs  # fewer than B repeats (the wrap)


def test_train_one_epoch_sends_only_full_batches_and_counts_the_wrap():
    data = tiny_data(n=10)
    model = tiny_net()
    opt = build_optimizer("adamw-gc", model, lr=1e-3)
    step = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None)
    shapes = []
    real_call = step.__call__

    class Spy:
        graphed = False

        def __call__(self, idx, r):
            shapes.append((tuple(idx.shape), tuple(r.shape)))
            return real_call(idx, r)

    out = engine.train_one_epoch(model, opt, data, batch_size=4, gen=torch.Generator().manual_seed(1),
                                 amp_dtype=None, step_fn=Spy())
    assert shapes == [((4,), (4, 4))] * 3  # 10 images → 3 full steps, the tail wrapped
    assert out["images"] == 12 and 0 <= out["acc"] <= 1 and out["loss"] > 0


def test_step_body_equals_a_hand_written_step():
    """gather → augment → forward → loss → backward → GC → AdamW, through the static buffers,
    equals the same computation written out here (fp32, CPU)."""
    data = tiny_data(n=8)
    ours, ref = tiny_net(), tiny_net()
    opt = build_optimizer("adamw-gc", ours, lr=1e-2, weight_decay=0.1)
    ref_opt = build_optimizer("adamw-gc", ref, lr=1e-2, weight_decay=0.1)
    step = engine.make_train_step(ours, opt, data, batch_size=4, amp_dtype=None, cuda_graphs=True)
    assert not step.graphed  # CPU: the same body runs eagerly
    assert not torch.is_tensor(opt.param_groups[0]["lr"])  # eager keeps a float lr
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        idx = torch.randperm(8, generator=g)[:4]
        r = torch.rand(4, 4, generator=g)
        loss, hits = step(idx, r)
        x = augment_with(data.x[idx].float() / 255, r)
        ref_opt.zero_grad()
        logits = ref(x)
        ref_loss = F.cross_entropy(logits, data.y[idx])
        ref_loss.backward()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-6)
        assert int(hits) == int((logits.argmax(1) == data.y[idx]).sum())
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_step_refuses_a_batch_of_another_shape():
    data = tiny_data(n=8)
    model = tiny_net()
    step = engine.make_train_step(model, build_optimizer("adamw-gc", model, lr=1e-3), data,
                                  batch_size=4, amp_dtype=None)
    with pytest.raises(Exception, match="batch 4"):
        step(torch.arange(3), None)


@pytest.mark.parametrize("resumed", [False, True])
def test_warm_up_steps_are_undone_before_capture(resumed):
    """What _capture does around its warm-up steps: after restore, training continues
    exactly as if the warm-up never ran (fresh Adam state, or a resumed one)."""
    data = tiny_data(n=8)

    def setup():
        model = tiny_net()
        opt = build_optimizer("adamw-gc", model, lr=1e-2, weight_decay=0.1)
        step = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None)
        if resumed:
            step(torch.arange(4), torch.rand(4, 4, generator=torch.Generator().manual_seed(9)))
        return model, opt, step

    idx, r = torch.arange(4, 8), torch.rand(4, 4, generator=torch.Generator().manual_seed(5))
    a_model, a_opt, a_step = setup()
    a_step(idx, r)
    b_model, b_opt, b_step = setup()
    saved = engine.snapshot_training_state(b_model, b_opt)
    for k in range(3):  # the warm-up: real steps that change weights, BN stats, moments
        b_step(torch.arange(4) + k % 2, torch.rand(4, 4))
    assert not torch.equal(b_model[0].weight, saved["tensors"][0])  # the warm-up did move it
    engine.restore_training_state(b_model, b_opt, saved)
    b_step(idx, r)
    for p, q in zip((*a_model.parameters(), *a_model.buffers()), (*b_model.parameters(), *b_model.buffers()),
                    strict=True):
        assert torch.equal(p, q)


def test_compile_step_matches_eager_on_cpu():
    """--compile (torch.compile of the forward, same step) against eager, on a tiny net."""
    data = tiny_data(n=8)
    losses = {}
    for mode in ("eager", "compile"):
        model = tiny_net()
        opt = build_optimizer("adamw-gc", model, lr=1e-2)
        forward = torch.compile(model) if mode == "compile" else model
        step = engine.make_train_step(forward, opt, data, batch_size=4, amp_dtype=None, model=model)
        t0 = time.perf_counter()
        try:
            losses[mode] = [float(step(torch.arange(4) + k, torch.rand(4, 4, generator=torch.Generator().manual_seed(k)))[0])
                            for k in range(3)]
        except Exception as exc:  # no C++ toolchain for inductor, etc.
            pytest.skip(f"torch.compile unavailable on this CPU: {type(exc).__name__}")
        if mode == "compile" and time.perf_counter() - t0 > 120:
            pytest.skip(f"compiling took {time.perf_counter() - t0:.0f} s")
    assert losses["compile"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)


def test_graphed_inference_runs_eager_off_cuda_and_matches_the_model():
    model = tiny_net().eval()
    wrapped = inference.GraphedInference(model, amp_dtype=None).eval()
    x = tiny_data(n=3).x
    a = inference.predict_logits(model, x, batch_size=2)
    b = inference.predict_logits(wrapped, x, batch_size=2)  # what FaceClassifier hands predict_logits
    assert torch.equal(a, b) and wrapped.graphs == {}  # CPU: nothing captured
