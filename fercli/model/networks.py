"""The networks: a plain ResNet34 baseline and OBSR-Net's bilinear ResNet34 (B-CNN).

OBSR-Net ("Facial Expression Recognition via Optimized Bilinear ResNet34", 2024) runs two
ResNet34 feature extractors f_A and f_B over the same face and pools their outer product:

    b(l) = f_A(l)^T f_B(l)                 (1)  outer product at location l: C x C'
    M    = sum_l b(l)                      (2)  sum pooling over all H*W locations
    x    = vec(M)                          (4)  C*C' = 512*512 = 262144 features
    y    = sign(x) * sqrt(|x|)             (5)  signed square root
    z    = y / ||y||_2                     (6)  L2 normalisation
    p    = softmax(W z + b)                (7)  the softmax lives in the cross-entropy loss

Every model takes the same input: float greyscale faces N x 1 x H x W in [0, 1], any H, W.
The first submodule (FaceInput) resizes, repeats to 3 channels and normalises, so training,
evaluation and `fer predict` share one preprocessing path and checkpoints carry it.

Models are built by name (`build_model`) and carry a small json-serialisable `spec` from
which `model_from_spec` rebuilds the architecture for a checkpoint.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fercli.errors import FerError
from fercli.files import torch_load_weights_only

# torchvision's ImageNet statistics: the pretrained trunks expect inputs normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision ResNet34_Weights.IMAGENET1K_V1; torch.hub caches it under this file name.
RESNET34_WEIGHTS_FILE = "resnet34-b627a593.pth"
RESNET34_WEIGHTS_URL = "https://download.pytorch.org/models/resnet34-b627a593.pth"

TRUNK_CHANNELS = 512  # channels of ResNet34's last stage (layer4)
# ResNet34 downsamples 32x (stride-2 stem, max-pool, three stride-2 stages): from 32 px the last
# feature map is at least 1x1 pixel of real input; below it the deeper stages only see padding.
MIN_IMAGE_SIZE = 32

SPEC_KEYS = ("name", "num_classes", "image_size", "shared_backbone")


# -----------------------------------------------------------------------------
# Input: greyscale [0, 1] -> resized, 3-channel, ImageNet-normalised


class FaceInput(nn.Module):
    """N x 1 x H x W floats in [0, 1] -> N x 3 x S x S ImageNet-normalised, on the device.

    Normalising with the ImageNet mean/std happens always, pretrained or not: from scratch it
    is a harmless fixed affine map (BatchNorm follows), and one code path means a checkpoint
    never has to remember how its inputs were scaled.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        # (1, 3, 1, 1) so they broadcast over N, H, W. Not persistent: they are constants,
        # so checkpoints stay pure weights.
        self.register_buffer("mean", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.empty(1, 3, 1, 1), persistent=False)
        self.reset_constants()

    @torch.no_grad()
    def reset_constants(self) -> None:
        """Fill the constant buffers; again after to_empty (model_from_spec(empty=True))."""
        self.mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected greyscale faces N x 1 x H x W, got {tuple(x.shape)}")
        if not x.is_floating_point():  # uint8 0..255 is unambiguous: scale it to [0, 1]
            x = x.float() / 255.0
        s = self.image_size
        if x.shape[-2:] != (s, s):
            # (N, 1, H, W) -> (N, 1, S, S); only when needed, so 48 px FER2013 at 48 is a no-op
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
        x = x.expand(-1, 3, -1, -1)  # (N, 3, S, S), a view: the trunks expect RGB
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"


# -----------------------------------------------------------------------------
# ResNet34 trunk (torchvision resnet34 minus avgpool/fc)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    (N, C_in, H, W) -> (N, planes, H/stride, W/stride); the shortcut is a strided 1x1 conv + BN
    (`downsample`) where the shape changes, else the identity. torchvision's names and order."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet34Trunk(nn.Module):
    """ResNet34 (He et al. 2016) up to layer4: (N, 3, S, S) -> (N, 512, S/32, S/32) (ceil).

    Written out here rather than taken from torchvision, whose import about doubles torch's own
    in every process that loads a model (`fer predict`, the server). It is torchvision's resnet34 to the
    parameter: the same submodule names, so an ImageNet state dict (minus fc.*) loads with
    strict=True, and the same random init drawn in the same order, so a seed gives the very
    weights torchvision's resnet34(weights=None) gives (tests/test_model.py checks both).
    The last map is 2x2 at 48 px, 3x3 at 96 px, 7x7 at 224 px.
    """

    STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(self.STAGES, start=1):
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or inplanes != planes:  # built before its block, as torchvision does
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=s, bias=False), nn.BatchNorm2d(planes))
                layers.append(BasicBlock(inplanes, planes, s, down))
                inplanes = planes
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        # torchvision builds its 1000-class fc here; drawing the same numbers (and dropping
        # them) keeps the random stream, and so the init below, identical to its resnet34.
        nn.Linear(TRUNK_CHANNELS, 1000)
        if self.conv1.weight.is_meta:  # model_from_spec(empty=True): every weight is loaded next, and
            return  # torch's meta-device normal_ imports torch._dynamo (~1.4 s) for nothing
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, S/4, S/4)
        x = self.layer1(x)  # (N, 64, S/4, S/4)
        x = self.layer2(x)  # (N, 128, S/8, S/8)
        x = self.layer3(x)  # (N, 256, S/16, S/16)
        return self.layer4(x)  # (N, 512, S/32, S/32)


# -----------------------------------------------------------------------------
# Bilinear pooling, eq. (1)-(6)


def bilinear_pool(fa: Tensor, fb: Tensor) -> Tensor:
    """(N, C, H, W), (N, C', H, W) -> M (N, C, C') = sum_l f_A(l)^T f_B(l), eq. (1)-(2).

    One batched matmul does the outer product at every location and the sum over locations:
    (N, C, HW) @ (N, HW, C') -> (N, C, C'). Sum pooling, as the paper writes it (no 1/HW):
    the L2 normalisation of eq. (6) removes any global scale anyway.
    """
    if fa.shape[0] != fb.shape[0] or fa.shape[2:] != fb.shape[2:]:
        raise ValueError(f"feature maps differ in batch or spatial size: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    return torch.bmm(fa.flatten(2), fb.flatten(2).transpose(1, 2))  # eq. (1)-(2)


def signed_sqrt(x: Tensor, eps: float = 1e-5) -> Tensor:
    """sign(x) * sqrt(|x|), eq. (5), in a form whose gradient is finite at exactly 0.

    sqrt(relu(x) + eps) - sqrt(relu(-x) + eps), as the official PyTorch B-CNN: it is exactly 0
    at x = 0 and its gradient there is 0 (relu'(0) = 0) instead of 0 * inf = NaN. ReLU trunks
    do produce exact zeros in M (a channel dead over the whole face), so this matters.
    Away from 0 the gradient is 0.5 / sqrt(|x| + eps).
    """
    return torch.sqrt(F.relu(x) + eps) - torch.sqrt(F.relu(-x) + eps)  # eq. (5)


def naive_signed_sqrt(x: Tensor) -> Tensor:
    """The textbook sign(x) * sqrt(|x|), eq. (5): NaN gradient at 0. Only a test control."""
    return torch.sign(x) * torch.sqrt(torch.abs(x))


class _SignedSqrtL2Normalize(torch.autograd.Function):
    """z = normalize(signed_sqrt(x)), eq. (5)–(6) in one autograd Function.

    Same values as signed_sqrt followed by F.normalize — for x > 0 both are
    sqrt(x+eps) − sqrt(eps), mirrored for x < 0, exactly 0 at 0 — and the same gradient
    (0 at exactly 0). Why fuse: x is (N, 512·512) fp32, 64 MB at batch 64. The unfused ops
    allocate ~8 such tensors forward and ~10 backward; this allocates one and two, which made
    the head's forward+backward ~3.5× cheaper on a CPU (docs/benchmarks.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, norm_eps: float) -> Tensor:  # type: ignore[override]
        r = torch.tensor(eps, dtype=x.dtype).sqrt().item()  # sqrt(0 + eps) in x's dtype
        y = torch.abs(x).add_(eps).sqrt_().sub_(r).copysign_(x)  # eq. (5)
        n = torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min_(norm_eps)
        z = y.div_(n)  # eq. (6), as F.normalize: y / max(||y||, 1e-12)
        ctx.save_for_backward(z, n)
        ctx.r = r
        return z

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        z, n = ctx.saved_tensors
        gz = torch.bmm(g.unsqueeze(1), z.unsqueeze(2)).squeeze(2)  # (N, 1) = <g, z>
        gy = torch.addcmul(g, z, gz, value=-1).div_(n)  # back through eq. (6)
        # back through eq. (5): d sqrt(|x|+eps)/dx = 0.5 / sqrt(|x|+eps) = 0.5 / (|y| + r)
        d = torch.abs(z).mul_(n).add_(ctx.r)
        return gy.div_(d).mul_(0.5).masked_fill_(z == 0, 0), None, None


def normalize_bilinear(m: Tensor, eps: float = 1e-5) -> Tensor:
    """M (N, C, C') -> z (N, C*C'): reshape (4), signed sqrt (5), L2 normalise (6).

    The fused Function computes exactly `F.normalize(signed_sqrt(m.flatten(1)), dim=1)`
    (tests/test_model.py checks values and gradients against that composition).
    """
    x = m.flatten(1)  # eq. (4): (N, C*C')
    return _SignedSqrtL2Normalize.apply(x, eps, 1e-12)  # eq. (5) + eq. (6): ||z||_2 = 1


# -----------------------------------------------------------------------------
# The two architectures


class FerNet(nn.Module):
    """What both architectures share: an `input` (FaceInput), trunks(), a frozen-trunk mode."""

    frozen_backbone: bool = False

    def trunks(self) -> list[nn.Module]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> FerNet:
        # A frozen trunk whose BatchNorm running statistics still drift in train() is not
        # frozen: its features would keep changing under the classifier. Keep it in eval.
        super().train(mode)
        if self.frozen_backbone:
            for trunk in self.trunks():
                trunk.eval()
        return self


class ResNet34Classifier(FerNet):
    """Baseline: ResNet34 (global average pooling) with a num_classes fc head."""

    def __init__(self, num_classes: int, image_size: int = 48) -> None:
        super().__init__()
        self.input = FaceInput(image_size)
        self.trunk = ResNet34Trunk()
        self.fc = nn.Linear(TRUNK_CHANNELS, num_classes)

    def trunks(self) -> list[nn.Module]:
        return [self.trunk]

    def forward(self, x: Tensor) -> Tensor:
        f = self.trunk(self.input(x))  # (N, 512, h, w)
        return self.fc(f.mean(dim=(2, 3)))  # (N, 512) -> logits (N, num_classes)


class BilinearResNet34(FerNet):
    """OBSR-Net's B-CNN: two ResNet34 trunks, bilinear pooling (1)-(6), linear layer (7).

    shared_backbone=True uses one trunk as both f_A and f_B (the symmetric B-CNN: half the
    parameters, one trunk pass, and M is symmetric).
    """

    def __init__(self, num_classes: int, image_size: int = 48, shared_backbone: bool = False) -> None:
        super().__init__()
        self.input = FaceInput(image_size)
        self.trunk_a = ResNet34Trunk()
        # Not registered twice when shared: state_dict stays half the size, params unique.
        self.trunk_b = None if shared_backbone else ResNet34Trunk()
        self.fc = nn.Linear(TRUNK_CHANNELS * TRUNK_CHANNELS, num_classes)  # eq. (7)

    @property
    def shared_backbone(self) -> bool:
        return self.trunk_b is None

    def trunks(self) -> list[nn.Module]:
        return [self.trunk_a] if self.trunk_b is None else [self.trunk_a, self.trunk_b]

    def bilinear(self, x: Tensor) -> Tensor:
        """Faces (N, 1, H, W) -> M (N, 512, 512), eq. (1)-(2), always in fp32."""
        x = self.input(x)  # (N, 3, S, S)
        fa = self.trunk_a(x)  # (N, 512, h, w)
        fb = fa if self.trunk_b is None else self.trunk_b(x)  # (N, 512, h, w)
        # The sum of h*w products and the sqrt near 0 are where fp16/bf16 lose it: fp32 here.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return bilinear_pool(fa.float(), fb.float())

    def pooled(self, x: Tensor) -> Tensor:
        """Faces (N, 1, H, W) -> z (N, 512*512), eq. (1)-(6), fp32, ||z|| = 1."""
        m = self.bilinear(x)
        with torch.autocast(device_type=m.device.type, enabled=False):
            return normalize_bilinear(m)

    def forward(self, x: Tensor) -> Tensor:
        z = self.pooled(x)  # (N, 512*512) fp32, unit norm: entries ~1/512
        # eq. (7) in fp32 too: 1.8 MFLOP per face, nothing beside the trunks; and on AMX CPUs
        # the bf16 oneDNN matmul with K = 262,144 was seen to die with SIGFPE (1 thread).
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.fc(z)  # logits (N, num_classes), softmax in the loss


# -----------------------------------------------------------------------------
# Registry, specs


def _build_resnet34(num_classes: int, image_size: int, shared_backbone: bool) -> nn.Module:
    if shared_backbone:
        raise FerError("--shared-backbone only applies to model bcnn-resnet34, not resnet34")
    return ResNet34Classifier(num_classes, image_size)


def _build_bcnn_resnet34(num_classes: int, image_size: int, shared_backbone: bool) -> nn.Module:
    return BilinearResNet34(num_classes, image_size, shared_backbone)


MODELS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "resnet34": _build_resnet34,
    "bcnn-resnet34": _build_bcnn_resnet34,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def _check_int(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FerError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_image_size(image_size: int) -> int:
    """The network input size (--image-size, a model spec's image_size): an integer >= MIN_IMAGE_SIZE."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise FerError(f"--image-size must be an integer ≥ {MIN_IMAGE_SIZE} (ResNet34 downsamples 32×), "
                       f"got {image_size!r}")
    return image_size


def _architecture(name: str, num_classes: int, image_size: int, shared_backbone: bool) -> nn.Module:
    """Build the bare architecture (random init) and attach its spec."""
    if name not in MODELS:
        raise FerError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    _check_int("num_classes", num_classes, 1)
    check_image_size(image_size)
    if not isinstance(shared_backbone, bool):
        raise FerError(f"shared_backbone must be true or false, got {shared_backbone!r}")
    model = MODELS[name](num_classes, image_size, shared_backbone)
    model.spec = {  # plain json-serialisable dict: what a checkpoint needs to rebuild this
        "name": name,
        "num_classes": num_classes,
        "image_size": image_size,
        "shared_backbone": shared_backbone,
    }
    return model


def build_model(
    name: str,
    num_classes: int,
    *,
    image_size: int = 48,
    pretrained: bool = False,
    weights: str | Path | None = None,
    shared_backbone: bool = False,
    freeze_backbone: bool = False,
) -> nn.Module:
    """Build a model by name (see MODEL_NAMES); raises FerError for anything user-fixable.

    pretrained=True loads torchvision's ImageNet resnet34 weights into every trunk (§2.2);
    passing `weights` (a resnet34 state-dict file) implies pretrained. freeze_backbone=True
    trains only the classifier (the paper's literal §2.2) and keeps the trunks' BatchNorm
    statistics fixed.
    """
    state = None
    if pretrained or weights is not None:  # read the weights first: their errors come fast
        path = resolve_pretrained_weights(weights)
        state = load_resnet34_state_dict(path)
    model = _architecture(name, num_classes, image_size, shared_backbone)
    if state is not None:
        for trunk in model.trunks():
            _load_trunk(trunk, state, path)  # the same ImageNet weights in f_A and f_B
    if freeze_backbone:
        freeze_trunks(model)
    return model


def model_from_spec(spec: dict, empty: bool = False) -> nn.Module:
    """Rebuild the architecture described by `model.spec` (random init, no weights loaded).

    empty=True skips the random init, for callers that load every weight strictly next
    (checkpoints, exports): built on the meta device, then given uninitialised CPU memory,
    and the constants that no checkpoint carries (FaceInput's mean/std) are refilled. The
    init is most of the build: 1.9 s → 0.05 s for the shared-trunk B-CNN on the dev CPU."""
    if not isinstance(spec, dict):
        raise FerError(f"model spec must be a mapping, got {type(spec).__name__}")
    if set(spec) != set(SPEC_KEYS):
        missing = sorted(set(SPEC_KEYS) - set(spec))
        extra = sorted(set(spec) - set(SPEC_KEYS))
        raise FerError(f"bad model spec: missing keys {missing}, unexpected keys {extra}; expected {list(SPEC_KEYS)}")
    args = (spec["name"], spec["num_classes"], spec["image_size"], spec["shared_backbone"])
    if not empty:
        return _architecture(*args)
    with torch.device("meta"):
        model = _architecture(*args)
    model.to_empty(device="cpu")  # in place: model.spec stays
    for m in model.modules():
        if isinstance(m, FaceInput):
            m.reset_constants()
    return model


def freeze_trunks(model: nn.Module) -> None:
    """requires_grad=False on every trunk parameter; FerNet.train keeps their BN in eval."""
    for trunk in model.trunks():
        trunk.requires_grad_(False)
    model.frozen_backbone = True
    model.train(model.training)  # re-apply: puts the trunks in eval mode now


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters; trainable_only counts those with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# -----------------------------------------------------------------------------
# ImageNet weights (offline-first)


def _weights_hint(cache: Path) -> str:
    return (
        f"ImageNet weights for resnet34 not found: put {RESNET34_WEIGHTS_FILE} "
        f"(torchvision ResNet34_Weights.IMAGENET1K_V1) in {cache} or pass --weights FILE"
    )


def resolve_pretrained_weights(weights: str | Path | None = None, *, download: bool = True) -> Path:
    """The resnet34 ImageNet state-dict file to load.

    An explicit `weights` file wins; else torch.hub's cache ($TORCH_HOME/hub/checkpoints);
    else, with `download`, a download, tried only when download.pytorch.org answers within 2 s
    and FER_OFFLINE is unset, because an offline urlopen can hang. Every failure is a one-line
    FerError.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            raise FerError(f"weights {path} is a directory; pass the resnet34 state-dict file ({RESNET34_WEIGHTS_FILE})")
        if not path.is_file():
            raise FerError(f"weights file not found: {path}")
        return path

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache / RESNET34_WEIGHTS_FILE
    if cached.is_file():
        return cached
    if not download or os.environ.get("FER_OFFLINE", "").strip() not in ("", "0"):
        raise FerError(_weights_hint(cache))
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=2).close()
        cache.mkdir(parents=True, exist_ok=True)
        # Downloads to a temp file and renames, checking the sha256 prefix in the name.
        torch.hub.download_url_to_file(RESNET34_WEIGHTS_URL, str(cached), hash_prefix="b627a593", progress=False)
    except (OSError, RuntimeError, ValueError) as e:  # URLError, timeouts, DNS are OSErrors
        raise FerError(f"{_weights_hint(cache)} (download failed: {type(e).__name__})") from None
    return cached


def load_resnet34_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a torchvision resnet34 state dict safely (weights_only=True); FerError naming the file."""
    path = Path(path)
    try:
        state = torch_load_weights_only(path)
    except Exception as e:  # truncated zip, pickle payload, not a torch file, ...: all the user's to fix
        raise FerError(f"{path} is not a loadable PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise FerError(f"{path} is not a resnet34 state dict (expected a mapping of names to tensors)")
    return state


def _load_trunk(trunk: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Copy a resnet34 state dict (fc.* ignored) into a trunk, FerError on any mismatch."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = trunk.state_dict()
    # Old BN checkpoints lack num_batches_tracked; BatchNorm fills it in, so it is optional.
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in state.keys() & expected.keys() if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise FerError(
            f"{path} is not a torchvision resnet34 state dict: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} wrongly shaped keys (e.g. {first!r})"
        )
    trunk.load_state_dict(state, strict=False)  # strict checked above, modulo num_batches_tracked


def init_trunks_from(model: nn.Module, source: nn.Module, what: str = "--init-from") -> int:
    """Copy a trained fercli model's trunks (weights + BatchNorm statistics) into `model`.

    The transfer-learning step of §2.2 with a FER2013 model instead of ImageNet. As with
    ImageNet weights, one source trunk starts every trunk of `model`: a resnet34 or a
    shared-trunk B-CNN source fills a resnet34, a shared-trunk B-CNN, or both trunks of a
    two-trunk B-CNN (Table 5's "Pretrain" rows). A two-trunk source fills a two-trunk
    `model` trunk for trunk; into one trunk it is refused (which of the two is ambiguous).
    The classifier head (fc) and the input layer are left as built (the head is fresh: the
    class sets differ); the input size may differ (the trunks are convolutional). Returns
    the number of tensors copied.
    """
    dst_spec, src_spec = dict(getattr(model, "spec", {})), dict(getattr(source, "spec", {}))

    def arch(spec: dict) -> str:
        return f"{spec.get('name')}" + (" (shared trunk)" if spec.get("shared_backbone") else "")

    dst_trunks, src_trunks = model.trunks(), source.trunks()
    if len(src_trunks) == 1:
        pairs = [(dst, src_trunks[0]) for dst in dst_trunks]
    elif len(src_trunks) == len(dst_trunks):
        pairs = list(zip(dst_trunks, src_trunks, strict=True))
    else:
        raise FerError(f"{what} is {arch(src_spec)} with {len(src_trunks)} trunks, this run builds "
                       f"{arch(dst_spec)} with {len(dst_trunks)}: which trunk to take is ambiguous; "
                       f"use --arch {src_spec.get('name')}")
    copied = 0
    for dst, src in pairs:
        state = src.state_dict()
        dst.load_state_dict(state, strict=True)  # same trunk class, same keys and shapes
        copied += len(state)
    return copied
