"""fercli.model.networks: the bilinear pooling math (eq. 1-7), the two architectures, weights, specs."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F

from fercli.errors import FerError
from fercli.model.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAMES,
    RESNET34_WEIGHTS_FILE,
    FaceInput,
    bilinear_pool,
    build_model,
    count_parameters,
    model_from_spec,
    naive_signed_sqrt,
    normalize_bilinear,
    resolve_pretrained_weights,
    signed_sqrt,
)

VARIANTS = [(name, False) for name in MODEL_NAMES] + [("bcnn-resnet34", True)]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    # Never download in tests, and never see a real torch hub cache.
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@functools.lru_cache(maxsize=None)
def cached_model(name: str, image_size: int = 48, shared: bool = False) -> torch.nn.Module:
    """A model for read-only checks (building ResNet34 trunks costs ~0.5 s each)."""
    torch.manual_seed(0)
    return build_model(name, 7, image_size=image_size, shared_backbone=shared).eval()


def faces(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g)


# -----------------------------------------------------------------------------
# eq. (1)-(6) on plain tensors, float64


def test_bilinear_pool_equals_sum_of_outer_products_over_locations():
    torch.manual_seed(0)
    fa = torch.randn(2, 3, 2, 3, dtype=torch.float64)  # (N, C, H, W)
    fb = torch.randn(2, 4, 2, 3, dtype=torch.float64)  # (N, C', H, W)
    expected = torch.zeros(2, 3, 4, dtype=torch.float64)
    for n in range(2):
        for h in range(2):
            for w in range(3):
                expected[n] += torch.outer(fa[n, :, h, w], fb[n, :, h, w])  # eq. (1), summed: (2)
    m = bilinear_pool(fa, fb)
    assert m.shape == (2, 3, 4)
    torch.testing.assert_close(m, expected, rtol=1e-12, atol=1e-12)


def test_bilinear_pool_rejects_mismatched_maps():
    with pytest.raises(ValueError):
        bilinear_pool(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 3, 3))


def test_normalized_bilinear_has_unit_norm_and_ignores_location_order():
    torch.manual_seed(0)
    fa = F.relu(torch.randn(2, 5, 3, 4, dtype=torch.float64))
    fb = F.relu(torch.randn(2, 6, 3, 4, dtype=torch.float64))
    z = normalize_bilinear(bilinear_pool(fa, fb))
    assert z.shape == (2, 5 * 6)  # eq. (4)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, dtype=torch.float64))  # eq. (6)

    perm = torch.randperm(12)  # the same permutation of the H*W locations in both maps
    fa_p = fa.flatten(2)[:, :, perm].view_as(fa)
    fb_p = fb.flatten(2)[:, :, perm].view_as(fb)
    torch.testing.assert_close(normalize_bilinear(bilinear_pool(fa_p, fb_p)), z)
    # Control: the pairing of locations matters, permuting only f_B changes z.
    assert not torch.allclose(normalize_bilinear(bilinear_pool(fa, fb_p)), z)


def test_normalized_bilinear_applies_signed_sqrt_before_l2():
    torch.manual_seed(0)
    m = torch.randn(3, 4, 4, dtype=torch.float64) * 100  # |x| >> eps
    y = torch.sign(m) * torch.sqrt(m.abs())  # eq. (5), textbook
    expected = (y / y.norm(dim=(1, 2), keepdim=True)).flatten(1)  # eq. (4), (6)
    torch.testing.assert_close(normalize_bilinear(m), expected, rtol=0, atol=1e-4)
    # Control: plain L2 normalisation without the signed sqrt is far off.
    assert not torch.allclose(F.normalize(m.flatten(1), dim=1), expected, atol=1e-2)


def test_shared_features_give_a_symmetric_bilinear_matrix():
    fa = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    m = bilinear_pool(fa, fa)
    torch.testing.assert_close(m, m.transpose(1, 2))


def _pipeline_grads(sqrt_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d(f_A, f_B) through eq. (1)-(6) with ReLU features that have dead channels."""
    torch.manual_seed(0)
    fa = F.relu(torch.randn(2, 6, 2, 2, dtype=torch.float64))
    fb = F.relu(torch.randn(2, 6, 2, 2, dtype=torch.float64))
    fa[:, :2] = 0  # channels dead over the whole face: rows of M are exactly 0
    fa.requires_grad_(True)
    fb.requires_grad_(True)
    m = bilinear_pool(fa, fb)
    assert (m == 0).any()
    z = F.normalize(sqrt_fn(m.flatten(1)), dim=1)
    (z * torch.randn_like(z)).sum().backward()
    return fa.grad, fb.grad


def test_signed_sqrt_gradient_is_finite_at_exact_zeros():
    ga, gb = _pipeline_grads(signed_sqrt)
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0  # and it is a real gradient, not zeros


def test_naive_signed_sqrt_gradient_is_not_finite_at_exact_zeros():
    # Negative control for the test above: the same check catches the textbook form.
    ga, gb = _pipeline_grads(naive_signed_sqrt)
    assert not (torch.isfinite(ga).all() and torch.isfinite(gb).all())


def test_signed_sqrt_matches_analytic_value_and_derivative():
    eps = 1e-5
    x = torch.tensor([-9.0, -2.5, -0.3, -1e-3, 1e-3, 0.3, 2.5, 9.0], dtype=torch.float64, requires_grad=True)
    y = signed_sqrt(x, eps=eps)
    torch.testing.assert_close(y, torch.sign(x) * (torch.sqrt(x.abs() + eps) - eps**0.5))
    y.sum().backward()
    torch.testing.assert_close(x.grad, 0.5 / torch.sqrt(x.detach().abs() + eps))  # d/dx, x != 0
    assert torch.autograd.gradcheck(signed_sqrt, (x.detach().clone().requires_grad_(),))
    # eps = 0 is exactly the textbook eq. (5) away from 0, and 0 maps to 0 with gradient 0.
    torch.testing.assert_close(signed_sqrt(x.detach(), eps=0.0), naive_signed_sqrt(x.detach()))
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    signed_sqrt(z).sum().backward()
    assert signed_sqrt(z.detach()).eq(0).all() and z.grad.eq(0).all()


# -----------------------------------------------------------------------------
# Input handling


def test_face_input_normalises_repeats_and_resizes():
    inp = FaceInput(48)
    x = torch.full((2, 1, 48, 48), 0.5)
    out = inp(x)
    assert out.shape == (2, 3, 48, 48)
    for c in range(3):
        torch.testing.assert_close(out[:, c], torch.full((2, 48, 48), (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))

    small = torch.rand(2, 1, 30, 36)
    out = inp(small)
    assert out.shape == (2, 3, 48, 48)
    resized = F.interpolate(small, size=(48, 48), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(out[:, 1:2] * IMAGENET_STD[1] + IMAGENET_MEAN[1], resized)

    x48 = torch.rand(1, 1, 48, 48)  # already the right size: passed through untouched
    torch.testing.assert_close(inp(x48)[:, 0:1], (x48 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    with pytest.raises(ValueError):
        inp(torch.rand(2, 3, 48, 48))


# -----------------------------------------------------------------------------
# Whole models


@pytest.mark.parametrize("image_size,fmap", [(48, 2), (96, 3)])
@pytest.mark.parametrize("name,shared", VARIANTS)
def test_forward_backward_shapes_and_gradients(name, shared, image_size, fmap):
    torch.manual_seed(0)
    model = build_model(name, 7, image_size=image_size, shared_backbone=shared).train()
    x = faces(2, 40)  # not image_size: the model resizes
    trunk = model.trunks()[0]
    assert trunk(model.input(x)).shape == (2, 512, fmap, fmap)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()  # eq. (7)'s softmax
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "layer1" in n)


def test_bilinear_model_wiring():
    model = cached_model("bcnn-resnet34")
    assert model.fc.in_features == 512 * 512  # eq. (4), (7)
    x = faces()
    with torch.no_grad():
        h = model.input(x)
        m = bilinear_pool(model.trunk_a(h), model.trunk_b(h))
        torch.testing.assert_close(model.bilinear(x), m)
        z = model.pooled(x)
        torch.testing.assert_close(z, normalize_bilinear(m))
        torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
        torch.testing.assert_close(model(x), model.fc(z))
        assert not torch.allclose(m, m.transpose(1, 2), atol=1e-3)  # two trunks: not symmetric


def test_shared_backbone_model_is_symmetric_and_half_size():
    shared = cached_model("bcnn-resnet34", shared=True)
    two = cached_model("bcnn-resnet34")
    with torch.no_grad():
        m = shared.bilinear(faces())
    torch.testing.assert_close(m, m.transpose(1, 2), rtol=1e-5, atol=1e-5 * m.abs().max().item())
    trunk = count_parameters(shared.trunk_a)
    assert count_parameters(two) - count_parameters(shared) == trunk
    assert count_parameters(shared) == trunk + 512 * 512 * 7 + 7


def test_pooling_runs_in_fp32_under_autocast():
    model = cached_model("bcnn-resnet34", shared=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.bilinear(faces()).dtype == torch.float32
        assert model.pooled(faces()).dtype == torch.float32


def test_freeze_backbone_trains_only_the_classifier():
    model = build_model("bcnn-resnet34", 7, freeze_backbone=True, shared_backbone=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert count_parameters(model, trainable_only=True) == 512 * 512 * 7 + 7
    model.train()
    assert model.training and not model.trunk_a.training  # BN statistics stay fixed too
    before = model.trunk_a.bn1.running_mean.clone()
    model(faces())
    torch.testing.assert_close(model.trunk_a.bn1.running_mean, before)


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(FerError) as e:
        build_model("vgg16", 7)
    assert "vgg16" in str(e.value) and all(n in str(e.value) for n in MODEL_NAMES)


def test_shared_backbone_is_refused_for_plain_resnet():
    with pytest.raises(FerError, match="shared"):
        build_model("resnet34", 7, shared_backbone=True)


@pytest.mark.parametrize("name,shared", VARIANTS)
def test_spec_round_trip(name, shared):
    model = cached_model(name, shared=shared)
    spec = json.loads(json.dumps(model.spec))
    assert spec == {"name": name, "num_classes": 7, "image_size": 48, "shared_backbone": shared}
    rebuilt = model_from_spec(spec)
    assert rebuilt.spec == model.spec
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    # empty=True (checkpoint and export loading) skips the random init; after the strict load
    # it must be the same model to the bit, constants (FaceInput's mean/std) included.
    empty = model_from_spec(spec, empty=True)
    assert empty.spec == model.spec
    empty.load_state_dict(a, strict=True)
    assert not any(t.is_meta for t in (*empty.parameters(), *empty.buffers()))
    rebuilt.load_state_dict(a, strict=True)  # (not the cached model: its mode is shared)
    rebuilt.eval(), empty.eval()
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), empty(x))


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "resnet34", "num_classes": 7, "image_size": 48},  # missing key
        {"name": "resnet34", "num_classes": 7, "image_size": 48, "shared_backbone": False, "x": 1},
        {"name": "nope", "num_classes": 7, "image_size": 48, "shared_backbone": False},
        {"name": "resnet34", "num_classes": 0, "image_size": 48, "shared_backbone": False},
        {"name": "resnet34", "num_classes": 7, "image_size": "48", "shared_backbone": False},
        ["resnet34"],
    ],
)
def test_bad_spec_is_a_fer_error(spec):
    with pytest.raises(FerError):
        model_from_spec(spec)


# -----------------------------------------------------------------------------
# ImageNet weights


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    """A real torchvision resnet34 state dict (random init) saved like the ImageNet file."""
    from torchvision.models import resnet34

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / RESNET34_WEIGHTS_FILE
    torch.save(resnet34().state_dict(), path)
    return path


def test_missing_weights_offline_is_a_one_line_fer_error(tmp_path):
    with pytest.raises(FerError) as e:
        resolve_pretrained_weights(None)
    msg = str(e.value)
    assert RESNET34_WEIGHTS_FILE in msg and str(tmp_path / "torch-home" / "hub" / "checkpoints") in msg
    assert "--weights" in msg and "\n" not in msg
    with pytest.raises(FerError, match=RESNET34_WEIGHTS_FILE):
        build_model("resnet34", 7, pretrained=True)


def test_weights_found_in_the_torch_hub_cache(tmp_path, resnet34_file):
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / RESNET34_WEIGHTS_FILE).symlink_to(resnet34_file)
    assert resolve_pretrained_weights(None) == cache / RESNET34_WEIGHTS_FILE


def test_weights_argument_must_be_an_existing_file(tmp_path):
    with pytest.raises(FerError, match="nothere.pth"):
        resolve_pretrained_weights(tmp_path / "nothere.pth")
    with pytest.raises(FerError, match="directory"):
        resolve_pretrained_weights(tmp_path)


class NotAStateDict:  # a pickle payload weights_only=True must refuse
    pass


def _bad_weights(kind: str, path, real) -> None:
    if kind == "garbage":
        path.write_bytes(b"definitely not a torch file")
    elif kind == "truncated":
        data = real.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickle":
        torch.save(NotAStateDict(), path)
    elif kind == "wrong-keys":
        torch.save({"encoder.weight": torch.zeros(3)}, path)
    elif kind == "wrong-shape":
        state = torch.load(real, weights_only=True)
        state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
        torch.save(state, path)
    elif kind == "not-a-dict":
        torch.save([torch.zeros(3)], path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "pickle", "wrong-keys", "wrong-shape", "not-a-dict"])
def test_wrong_weights_file_is_a_fer_error_naming_it(tmp_path, resnet34_file, kind):
    path = tmp_path / f"bad-{kind}.pth"
    _bad_weights(kind, path, resnet34_file)
    with pytest.raises(FerError) as e:
        build_model("resnet34", 7, weights=path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_pretrained_weights_load_into_every_trunk(resnet34_file):
    saved = torch.load(resnet34_file, weights_only=True)
    model = build_model("bcnn-resnet34", 7, pretrained=True, weights=resnet34_file)
    for trunk in (model.trunk_a, model.trunk_b):
        torch.testing.assert_close(trunk.conv1.weight, saved["conv1.weight"], rtol=0, atol=0)
        torch.testing.assert_close(trunk.layer4[2].bn2.running_var, saved["layer4.2.bn2.running_var"])
    assert model.fc.weight.shape == (7, 512 * 512)  # fc.* of the file was not used
    plain = build_model("resnet34", 7, weights=resnet34_file)
    torch.testing.assert_close(plain.trunk.layer3[0].conv2.weight, saved["layer3.0.conv2.weight"])
    assert plain.fc.weight.shape == (7, 512)


# ----------------------------------------------------------------------------- fused head


def test_fused_head_equals_signed_sqrt_then_normalize_values_and_gradients():
    """normalize_bilinear's fused Function == F.normalize(signed_sqrt(x)) (eq. 5–6)."""
    import torch.nn.functional as F

    from fercli.model.networks import normalize_bilinear, signed_sqrt

    torch.manual_seed(0)
    m = torch.randn(3, 8, 8, dtype=torch.float64)
    m[0, :2] = 0.0  # exact zeros, as ReLU features give
    a = m.clone().requires_grad_(True)
    b = m.clone().requires_grad_(True)
    za = normalize_bilinear(a)
    zb = F.normalize(signed_sqrt(b.flatten(1)), dim=1)
    torch.testing.assert_close(za, zb)
    w = torch.randn_like(za)
    (za * w).sum().backward()
    (zb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.isfinite(a.grad).all()
    x = torch.randn(2, 4, 4, dtype=torch.float64).abs().add(0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(normalize_bilinear, (x,))


# -----------------------------------------------------------------------------
# The trunk is torchvision's resnet34 without importing torchvision


def test_trunk_is_torchvisions_resnet34_to_the_parameter_and_the_seed():
    """Same names and shapes (ImageNet weights load strictly), the same init for a seed, and
    the same features as torchvision's resnet34 up to layer4 with those weights."""
    from torchvision.models import resnet34

    from fercli.model.networks import ResNet34Trunk

    torch.manual_seed(7)
    ours = ResNet34Trunk()
    torch.manual_seed(7)
    ref = resnet34(weights=None)
    ref_state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    state = ours.state_dict()
    assert list(state) == list(ref_state)
    for k, v in ref_state.items():
        assert torch.equal(state[k], v), k
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        assert torch.allclose(ours(x), f, rtol=0, atol=0)


def test_loading_the_shipped_model_imports_neither_torchvision_nor_dynamo():
    """`fer predict` and the server pay for torch only: torchvision's import, and torch._dynamo's
    (which the meta device's random init pulls in), each cost seconds."""
    import subprocess
    import sys

    code = ("import sys, fercli; r = fercli.Recognizer(device='cpu'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision' or m.startswith('torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
