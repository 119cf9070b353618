"""The FID Inception network: InceptionV3 as in the TensorFlow graph (2015-12-05) that published FID, KID and IS
numbers come from, with the parameter names of its PyTorch port (pytorch-fid's `pt_inception-2015-12-05` weights),
so that release loads directly.

It differs from torchvision's InceptionV3 in the ways that graph does: average pools that do not count padding, a
max pool in the last block's pool branch, and 1008 output classes. Written here from the architecture; the weights
are loaded as plain tensors (never unpickled code), from `eval.inception_weights`.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gand.config import INCEPTION_WEIGHTS_URL

INPUT_SIZE = 299
FEATURES = 2048  # pool3
CLASSES = 1008
WEIGHTS_URL = INCEPTION_WEIGHTS_URL
WEIGHTS_SHA256_PREFIX = "6726825d"  # the release names its file after its hash, as torch.hub does
CACHE_DIR = Path(os.environ.get("GAND_CACHE", Path.home() / ".cache" / "gand"))


class Conv(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, as in TensorFlow), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            double = layer(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                double,
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """The last two blocks; the very last one pools with max instead of average (as the TensorFlow graph does)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1),
                torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInception(nn.Module):
    """Images in [-1, 1], any size -> (pool3 features N x 2048, logits N x 1008)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale sets are judged as grey RGB
        x = resize(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        features = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return features, self.fc(features)


def resize(images: torch.Tensor) -> torch.Tensor:
    """To 299 x 299 with an antialiased bilinear filter (matters when shrinking 512 px images; a no-op filter when
    enlarging 32 px ones)."""
    if images.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return images.float()
    return F.interpolate(
        images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
    )


def load_inception(weights: str | None = None, device: torch.device | str = "cpu") -> FIDInception:
    """The network with weights from a local path or fsspec URL (default: the public release, downloaded once
    into the cache and checked against its SHA-256)."""
    from gand.errors import DataError

    network = FIDInception()
    location = weights or WEIGHTS_URL
    try:
        state = torch.load(io.BytesIO(read_weights(location)), map_location="cpu", weights_only=True)
    except Exception as err:  # junk bytes reach torch's unpickler as any of a dozen errors (IndexError, KeyError...)
        # torch's own message suggests weights_only=False, which would run code from the file: not repeated here.
        raise DataError(
            f"FID Inception weights (--weights / eval.inception_weights) {location}: not a file of plain "
            "tensors (damaged, not a PyTorch file, or one that needs code to load) "
            f"({type(err).__name__}), refused without running anything from it. Use the published file "
            f"{posixpath.basename(WEIGHTS_URL)} (README: Evaluation)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"eval.inception_weights {location}: expected a state dict of tensors")
    state = {name: tensor for name, tensor in state.items() if not name.endswith("num_batches_tracked")}
    expected = network.state_dict()
    missing = [name for name in expected if name not in state and not name.endswith("num_batches_tracked")]
    unexpected = [name for name in state if name not in expected]
    misshapen = [name for name in state if name in expected and state[name].shape != expected[name].shape]
    if missing or unexpected or misshapen:
        raise DataError(
            f"eval.inception_weights does not fit the FID Inception network: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {misshapen[:5]}"
        )
    network.load_state_dict(state, strict=False)  # strict apart from BatchNorm's num_batches_tracked counters
    return network.eval().requires_grad_(False).to(device)


def read_weights(location: str) -> bytes:
    """Bytes of the weights file: a local path as is; a URL through the cache, verified when it is the release."""
    from gand.errors import DataError
    from gand.storage import read_url, redact

    if "://" not in location:
        try:
            return Path(location).read_bytes()
        except OSError as err:
            raise DataError(f"eval.inception_weights: cannot read {location}: {err.strerror}") from None
    cached = CACHE_DIR / Path(location.split("?")[0]).name
    if cached.exists():
        data = cached.read_bytes()
    else:
        try:
            data = read_url(location)
        except Exception as err:  # no network, no such object, ...
            raise DataError(
                f"cannot fetch the FID Inception weights from {redact(location)} ({type(err).__name__}: {err}). "
                f"Offline: download {WEIGHTS_URL} elsewhere, copy it to {CACHE_DIR}/ (or any path) and set "
                "eval.inception_weights to that path"
            ) from None
    if location == WEIGHTS_URL and not hashlib.sha256(data).hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
        raise DataError(
            f"{cached.name}: SHA-256 does not match the release ({WEIGHTS_SHA256_PREFIX}...); "
            f"delete {cached} and fetch it again"
        )
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(cached)
    return data
