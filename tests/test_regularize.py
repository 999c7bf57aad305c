"""Recipe regularisers (fercli.train.regularize, fercli.train.photometric): random erasing, mixup, the weight EMA and photometric jitter — exact
math, their place in the train step, resume and the CLI."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from fercli.cli import app
from fercli.data.resident import DeviceSplit
from fercli.train import engine
from fercli.train.photometric import (
    CONTRAST,
    GAMMA,
    JPEG_LUMA,
    PHOTO_DRAWS,
    blur_with,
    dct_matrix,
    jpeg_table,
    jpeg_with,
    photometric_with,
)
from fercli.train.regularize import (
    ERASE_AREA,
    ERASE_DRAWS,
    ERASE_RATIO,
    WeightEMA,
    cut_with,
    cutmix_draws,
    erase_with,
    mix_with,
    mixed_cross_entropy,
    mixup_lambdas,
)
from tests.fixtures import make_fer_like

# ------------------------------------------------------------------------------ random erasing


def _draws(area_frac: float, aspect: float, top: float, left: float, grey: float, apply: float = 0.0):
    """erase_with draws that give a rectangle of `area_frac` of the image and h/w = aspect."""
    a = (area_frac - ERASE_AREA[0]) / (ERASE_AREA[1] - ERASE_AREA[0])
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    rho = (math.log(aspect) - lo) / (hi - lo)
    return torch.tensor([[apply, a, rho, top, left, grey]], dtype=torch.float32)


def test_erase_with_fills_exactly_the_rectangle_it_describes():
    # 10×10 image, area 16 px, h/w 1 → 4×4; top = 0.5·(10 − 4) = 3, left = 0 → rows 3–6, cols 0–3.
    x = torch.rand(1, 1, 10, 10)
    out = erase_with(x, _draws(0.16, 1.0, 0.5, 0.0, 0.25), p=0.5)
    expected = x.clone()
    expected[0, 0, 3:7, 0:4] = 0.25
    assert torch.equal(out, expected)
    # 20×20 image, area 72 px, h/w 2 → 12×6, against the bottom-right corner (top and left draws 1).
    x = torch.rand(1, 1, 20, 20)
    out = erase_with(x, _draws(0.18, 2.0, 1.0, 1.0, 0.0), p=1.0)
    expected = x.clone()
    expected[0, 0, 8:20, 14:20] = 0.0
    assert torch.equal(out, expected)


def test_erase_with_leaves_images_whose_apply_draw_is_not_below_p():
    x = torch.rand(3, 1, 12, 12)
    r = torch.cat([_draws(0.3, 1.0, 0.5, 0.5, 0.0, apply=v) for v in (0.1, 0.5, 0.9)])
    out = erase_with(x, r, p=0.5)
    assert not torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])
    assert torch.equal(erase_with(x, r, p=0.0), x)


def test_erased_area_follows_the_drawn_fractions_on_average():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(4000, ERASE_DRAWS, generator=g)
    x = torch.full((4000, 1, 48, 48), 2.0)  # outside [0, 1): every erased pixel is visible
    out = erase_with(x, r, p=0.5)
    erased = (out != 2.0).flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.5) < 0.03
    frac = (out != 2.0).flatten(1).float().mean(1)[erased]
    assert abs(frac.mean().item() - sum(ERASE_AREA) / 2) < 0.02  # the mean of U(0.02, 0.33), less clamping


# ------------------------------------------------------------------------------ mixup


def test_mixup_blends_each_image_with_the_reversed_batch():
    x = torch.arange(3 * 4, dtype=torch.float32).view(3, 1, 2, 2)
    lam = torch.tensor(0.7)
    out = mix_with(x, lam)
    for b in range(3):
        assert torch.allclose(out[b], 0.7 * x[b] + 0.3 * x[2 - b])


def test_mixed_cross_entropy_is_cross_entropy_against_the_mixed_one_hot_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g)
    y = torch.tensor([0, 3, 6, 1, 1, 2])
    lam = torch.tensor(0.35)
    soft = 0.35 * F.one_hot(y, 7).float() + 0.65 * F.one_hot(y.flip(0), 7).float()
    want = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(mixed_cross_entropy(logits, y, lam), want)
    torch.testing.assert_close(mixed_cross_entropy(logits, y, torch.tensor(1.0), 0.1),
                               F.cross_entropy(logits, y, label_smoothing=0.1))


def test_mixup_lambdas_are_beta_draws_replayed_by_the_same_generator():
    a = mixup_lambdas(torch.Generator().manual_seed(3), 5000, 0.2, torch.device("cpu"))
    b = mixup_lambdas(torch.Generator().manual_seed(3), 5000, 0.2, torch.device("cpu"))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert abs(float(a.mean()) - 0.5) < 0.02  # Beta(α, α) is symmetric about 1/2
    # α = 0.2 is U-shaped: most mass near 0 or 1; α = 4 concentrates near 1/2.
    assert float(((a < 0.1) | (a > 0.9)).float().mean()) > 0.5
    c = mixup_lambdas(torch.Generator().manual_seed(3), 5000, 4.0, torch.device("cpu"))
    assert float(((c > 0.3) & (c < 0.7)).float().mean()) > 0.6


# ------------------------------------------------------------------------------ random zoom (--scale-aug)


def test_scale_aug_zooms_about_the_centre_by_the_drawn_factor():
    """No rotation, shift or flip; an 8×8 ramp whose value is each column's normalised
    x-coordinate p = (2j + 1)/8 − 1. Zooming by z samples the input at p / z, and bilinear
    interpolation of a ramp is exact: the output column holds p / z (z = 1.5 from r4 = 1 with
    max_scale 0.5; z = 0.5 from r4 = 0, where the centre four columns stay inside the image)."""
    from fercli.data.resident import augment_with

    p = (2 * torch.arange(8, dtype=torch.float32) + 1) / 8 - 1
    x = p.view(1, 1, 1, 8).expand(2, 1, 8, 8).contiguous()
    r = torch.tensor([[0.5, 0.5, 0.5, 0.9, 1.0], [0.5, 0.5, 0.5, 0.9, 0.0]])
    out = augment_with(x, r, max_scale=0.5)
    torch.testing.assert_close(out[0, 0], (p / 1.5).expand(8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, 0, :, 2:6], (p[2:6] / 0.5).expand(8, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(augment_with(x, r[:, :4]), x, atol=1e-6, rtol=0)  # off: no zoom


# ------------------------------------------------------------------------------ cutmix


def test_cut_with_pastes_the_partner_box_and_weighs_by_the_kept_area():
    """8×8 images, λ = 0.75 → box sides 8·√0.25 = 4; centre (0.5, 0.25)·8 = (4, 2): rows 2..5,
    columns 0..3 (pixel centres 2.5..5.5 and 0.5..3.5 lie in [2, 6) and [0, 4)). 16 of 64
    pixels come from the partner, so λ' = 0.75 exactly."""
    x = torch.stack([torch.full((1, 8, 8), float(b)) for b in range(3)])  # image b is all b
    out, lam = cut_with(x, torch.tensor([0.75, 0.5, 0.25]))
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[2:6, 0:4] = True
    for b in range(3):
        want = torch.where(box, torch.tensor(float(2 - b)), torch.tensor(float(b)))
        assert torch.equal(out[b, 0], want)
    assert float(lam) == 0.75


def test_cut_with_clips_the_box_at_the_border_and_recomputes_lambda():
    """λ = 0.75, centre at the top-left corner: only the 2×2 quarter of the 4×4 box is inside,
    so 4 of 64 pixels are pasted and λ' = 60/64, not the drawn 0.75."""
    x = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    out, lam = cut_with(x, torch.tensor([0.75, 0.0, 0.0]))
    assert float(out[0].sum()) == 4 and torch.equal(out[0, 0, :2, :2], torch.ones(2, 2))
    assert float(lam) == 60 / 64
    same, lam1 = cut_with(x, torch.tensor([1.0, 0.3, 0.6]))  # λ = 1: no box, the batch unchanged
    assert torch.equal(same, x) and float(lam1) == 1.0


def test_cutmix_draws_are_beta_lambdas_and_uniform_centres_replayed_by_the_generator():
    a = cutmix_draws(torch.Generator().manual_seed(5), 4000, 1.0, torch.device("cpu"))
    b = cutmix_draws(torch.Generator().manual_seed(5), 4000, 1.0, torch.device("cpu"))
    assert a.shape == (4000, 3) and torch.equal(a, b)
    # the λ column is exactly what mixup_lambdas draws from the same generator state
    assert torch.equal(a[:, 0], mixup_lambdas(torch.Generator().manual_seed(5), 4000, 1.0, torch.device("cpu")))
    assert float(a.min()) >= 0 and float(a.max()) < 1 + 1e-6
    assert abs(float(a[:, 1:].mean()) - 0.5) < 0.02  # Beta(1, 1) and the centres: uniform


# ------------------------------------------------------------------------------ weight EMA


def test_ema_update_is_the_warmed_up_moving_average():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()  # t = 1: d = min(0.9, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(ema.module[0].weight, d * w0 + (1 - d) * (w0 + 1))
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied
    for _ in range(200):  # past the warm-up d is the decay: ema → w geometrically
        ema.update()
    avg = ema.module[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(10.0)
    ema.update()
    torch.testing.assert_close(ema.module[0].weight, 0.9 * avg + 0.1 * model[0].weight.detach())
    assert not any(p.requires_grad for p in ema.module.parameters())
    state = ema.state_dict()
    other = WeightEMA(model, decay=0.9)
    other.load_state_dict(state)
    assert float(other.t) == 202 and torch.equal(other.module[0].weight, ema.module[0].weight)


def test_graph_capture_snapshot_restores_the_ema_too():
    model = torch.nn.Linear(4, 2)
    ema = WeightEMA(model, decay=0.99)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = engine.snapshot_training_state(model, opt, ema.tensors())
    before = [t.clone() for t in ema.tensors()]
    with torch.no_grad():
        model.weight.add_(1)
    ema.update()
    engine.restore_training_state(model, opt, saved, ema.tensors())
    assert all(torch.equal(a, b) for a, b in zip(ema.tensors(), before, strict=True))


# ------------------------------------------------------------------------------ in the train step


def test_train_step_draws_widen_only_when_erasing_is_on():
    data = DeviceSplit(torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8), torch.randint(0, 7, (8,)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None)
    erasing = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None, random_erasing=0.5)
    assert plain.draw_width == 4 and erasing.draw_width == 4 + ERASE_DRAWS
    both = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None, random_erasing=0.5, scale_aug=0.2)
    assert (both.affine_width, both.draw_width) == (5, 5 + ERASE_DRAWS)  # the zoom draw sits before erasing's


def test_erasing_and_mixup_change_the_step_and_off_means_the_old_step():
    """Same weights, data and draws: off (0) is exactly the plain step; each option changes the loss."""
    data = DeviceSplit(torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8), torch.randint(0, 7, (8,)))
    idx = torch.arange(4)
    r = torch.rand(4, 4 + ERASE_DRAWS, generator=torch.Generator().manual_seed(0))
    r[:, 4] = 0.0  # every image is erased when erasing is on

    def loss(**kw):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None, **kw)
        lam = torch.tensor(0.6) if kw.get("mixup") else torch.tensor([0.6, 0.5, 0.5]) if kw.get("cutmix") else None
        return float(step(idx, r[:, :step.draw_width], lam)[0])

    plain = loss()
    assert loss(random_erasing=0.0, mixup=0.0, cutmix=0.0) == plain
    assert loss(random_erasing=1.0) != plain
    assert loss(mixup=0.2) != plain
    assert loss(cutmix=1.0) != plain
    assert loss(scale_aug=0.0) == plain and loss(scale_aug=0.3) != plain


@pytest.mark.parametrize("flag,value", [("--random-erasing", "1.5"), ("--mixup", "-1"), ("--ema", "1.0"),
                                        ("--ema", "-0.1"), ("--cutmix", "nan"), ("--scale-aug", "1"),
                                        ("--photometric", "1.5")])
def test_bad_regulariser_values_are_one_line_errors(tmp_path, flag, value):
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    r = CliRunner().invoke(app, ["train", "--dataset", str(ds), "--device", "cpu", "--epochs", "1",
                                 "--out", str(tmp_path / "run"), flag, value])
    assert r.exit_code != 0
    assert flag in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_mixup_and_cutmix_together_are_refused(tmp_path):
    r = CliRunner().invoke(app, ["train", "--dataset", str(tmp_path), "--device", "cpu", "--epochs", "1",
                                 "--out", str(tmp_path / "run"), "--mixup", "0.2", "--cutmix", "1"])
    assert r.exit_code != 0 and "--mixup and --cutmix" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_train_help_explains_the_regularisers():
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--random-erasing", "--mixup", "--cutmix", "--scale-aug", "--ema", "onecycle"):
        assert flag in out


def test_the_regularisers_never_read_a_tensor_back_to_the_host(monkeypatch):
    """Inside a CUDA graph a host sync (item(), bool(), float(), ...) fails the capture, so the
    ops the step runs for erasing, mixup and the EMA must never read a value back."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.999)
    x, r = torch.rand(4, 1, 8, 8), torch.rand(4, ERASE_DRAWS)
    logits, y, lam = torch.randn(4, 7), torch.tensor([0, 1, 2, 3]), torch.tensor(0.3)

    def sync(*args, **kwargs):
        raise AssertionError("host sync")

    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    erase_with(x, r, 0.5)
    mix_with(x, lam)
    cut_with(x, torch.tensor([0.3, 0.2, 0.9]))
    mixed_cross_entropy(logits, y, lam, 0.1)
    ema.update()
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="host sync"):  # the trap itself works
        monkeypatch.setattr(torch.Tensor, "item", sync)
        torch.tensor(1.0).item()


# ------------------------------------------------------------------------------ photometric jitter


def _face48() -> np.ndarray:
    from tests.fixtures import sample_image

    return np.asarray(Image.fromarray(sample_image()).convert("L").resize((48, 48), Image.BILINEAR))


@pytest.mark.parametrize("quality", [10, 50, 75, 90])
def test_jpeg_with_decodes_what_libjpeg_does_to_a_grey_face(quality):
    """Against Pillow's libjpeg at the same quality: the simulated round trip lands within a
    grey level of the real one on average, while the compression itself moves pixels by
    several levels (the test is not passed by returning the input)."""
    face = _face48()
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, "JPEG", quality=quality)
    real = np.asarray(Image.open(buf), dtype=np.float32)
    ours = jpeg_with(torch.from_numpy(face.astype(np.float32))[None, None] / 255,
                     torch.tensor([float(quality)]))[0, 0].numpy() * 255
    assert np.array_equal(ours, np.round(ours))  # 8-bit output
    moved = np.abs(real - face).mean()
    assert np.abs(ours - real).mean() < min(1.5, 0.5 * moved), (quality, np.abs(ours - real).mean(), moved)


def test_jpeg_table_is_ijg_scaling_and_a_flat_block_survives_any_quality():
    assert torch.equal(jpeg_table(torch.tensor([50.0]))[0], JPEG_LUMA)  # q = 50: the table itself
    assert torch.equal(jpeg_table(torch.tensor([100.0]))[0], torch.ones(8, 8))  # q = 100: steps of 1
    assert int(jpeg_table(torch.tensor([10.0]))[0, 0, 0]) == (16 * 500 + 50) // 100  # 5000 / 10 = 500 %
    d = dct_matrix()
    torch.testing.assert_close(d @ d.T, torch.eye(8), atol=1e-6, rtol=0)  # orthonormal
    # A flat block has only its DC term, 8·(v − 128); at q = 10 its step is 80, so grey 100
    # (DC −224) is quantised to −240 and decodes to 128 − 240 / 8 = 98, in every block.
    flat = torch.full((1, 1, 16, 24), 100 / 255)
    out = jpeg_with(flat, torch.tensor([10.0]))
    assert torch.equal(out * 255, torch.full_like(out, 98.0))
    odd = jpeg_with(torch.rand(2, 1, 13, 21), torch.tensor([50.0, 90.0]))  # padded, cropped back
    assert odd.shape == (2, 1, 13, 21)


def test_blur_with_keeps_a_flat_image_and_its_mean_and_spreads_a_point_by_sigma():
    flat = torch.full((2, 1, 20, 20), 0.3)
    torch.testing.assert_close(blur_with(flat, torch.tensor([0.5, 1.4])), flat)
    point = torch.zeros(1, 1, 21, 21)
    point[0, 0, 10, 10] = 1.0
    for sigma in (0.6, 1.2):
        out = blur_with(point, torch.tensor([sigma]))[0, 0]
        assert abs(float(out.sum()) - 1.0) < 1e-5
        ys = torch.arange(21, dtype=torch.float32) - 10
        var = float((out.sum(1) * ys ** 2).sum())  # variance along one axis of the spread point
        t = torch.arange(-3, 4, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        assert abs(var - float((k / k.sum() * t ** 2).sum())) < 1e-4  # the 7-tap kernel's own variance


def test_photometric_with_applies_each_jitter_only_where_its_draw_is_below_p():
    x = torch.rand(4, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    r = torch.full((4, PHOTO_DRAWS), 0.9)  # nothing applied at p = 0.5
    assert torch.equal(photometric_with(x, r, 0.5), x)
    r[1, 0], r[1, 1] = 0.0, 1.0  # image 1: contrast at the top of the range, nothing else
    out = photometric_with(x, r, 0.5)
    assert torch.equal(out[[0, 2, 3]], x[[0, 2, 3]])
    mean = x[1].mean()
    torch.testing.assert_close(out[1], ((x[1] - mean) * CONTRAST[1] + mean).clamp(0, 1))
    r = torch.full((4, PHOTO_DRAWS), 0.9)
    r[2, 2], r[2, 3] = 0.0, 0.0  # image 2: gamma at the bottom of its range (x ** (1 / 1.6))
    torch.testing.assert_close(photometric_with(x, r, 0.5)[2], x[2].clamp_min(1e-6) ** GAMMA[0])
    r = torch.zeros(4, PHOTO_DRAWS)  # everything on: output is 8-bit JPEG
    out = photometric_with(x, r, 0.5) * 255
    torch.testing.assert_close(out, out.round())


def test_train_step_with_photometric_widens_its_draws_and_changes_the_step():
    data = DeviceSplit(torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8), torch.randint(0, 7, (8,)))
    idx = torch.arange(4)

    def step_loss(**kw):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step = engine.make_train_step(model, opt, data, batch_size=4, amp_dtype=None, **kw)
        r = torch.full((4, step.draw_width), 0.0)
        return step.draw_width, float(step(idx, r)[0])

    width, plain = step_loss()
    assert step_loss(photometric=0.0) == (width, plain)
    assert step_loss(photometric=0.5)[0] == width + PHOTO_DRAWS and step_loss(photometric=0.5)[1] != plain
    erase = step_loss(random_erasing=0.5, photometric=0.5)[0]
    assert erase == 4 + ERASE_DRAWS + PHOTO_DRAWS  # affine, erasing's, then the jitter's
