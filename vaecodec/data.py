"""Training data: every image decoded once into memory, random crops with flips and 90-degree turns."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .imageio import IMAGE_SUFFIXES


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def is_validation(path: Path, percent: float) -> bool:
    """Stable split by file name, so the validation set never changes between runs or machines."""
    h = int(hashlib.sha1(path.name.encode()).hexdigest()[:8], 16)
    return (h % 10000) < percent * 100


def split_images(paths: list[Path], val_percent: float) -> tuple[list[Path], list[Path]]:
    train = [p for p in paths if not is_validation(p, val_percent)]
    val = [p for p in paths if is_validation(p, val_percent)]
    if not val and val_percent > 0 and len(train) >= 5:  # small folders still get one held-out image
        pick = min(train, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
        train.remove(pick)
        val = [pick]
    return train, val


def _load(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_images(paths: list[Path], workers: int = 2) -> list[torch.Tensor]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(_load, paths))


class CropSampler:
    """Draws batches of random crops (with random flips and 90-degree rotations) from decoded images."""

    def __init__(self, images: list[torch.Tensor], crop: int, generator: torch.Generator):
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.crop = crop
        self.gen = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, max(1, high), (1,), generator=self.gen))

    def sample(self, batch: int) -> torch.Tensor:
        out = torch.empty(batch, 3, self.crop, self.crop, dtype=torch.uint8)
        for i in range(batch):
            img = self.images[self._randint(len(self.images))]
            _, h, w = img.shape
            if h < self.crop or w < self.crop:
                ph, pw = max(0, self.crop - h), max(0, self.crop - w)
                img = torch.nn.functional.pad(img[None].float(), (0, pw, 0, ph), mode="replicate")[0].byte()
                _, h, w = img.shape
            top, left = self._randint(h - self.crop + 1), self._randint(w - self.crop + 1)
            patch = img[:, top : top + self.crop, left : left + self.crop]
            if self._randint(2):
                patch = patch.flip(2)
            patch = torch.rot90(patch, self._randint(4), dims=(1, 2))
            out[i] = patch
        return out.float().div_(255.0)


class StackedCropSampler:
    """CropSampler for a folder of same-size images, vectorized: the images sit in one uint8 tensor on the
    training device and a whole batch is cut, flipped and turned in a few tensor operations, so that a GPU is not
    kept waiting by a per-crop Python loop. Offsets, flips and turns come from the same seeded CPU generator."""

    def __init__(self, images: list[torch.Tensor], crop: int, generator: torch.Generator,
                 device: torch.device | str = "cpu"):
        if not self.fits(images, crop):
            raise ValueError(f"StackedCropSampler needs images of one size, at least {crop} pixels each way")
        _, self.h, self.w = images[0].shape
        self.stack = torch.stack(images).to(device)
        self.crop = crop
        self.gen = generator

    @staticmethod
    def fits(images: list[torch.Tensor], crop: int) -> bool:
        shapes = {tuple(img.shape) for img in images}
        return len(shapes) == 1 and min(images[0].shape[1:]) >= crop

    def sample(self, batch: int) -> torch.Tensor:
        g, c = self.gen, self.crop
        idx = torch.randint(0, len(self.stack), (batch,), generator=g)
        top = torch.randint(0, self.h - c + 1, (batch,), generator=g)
        left = torch.randint(0, self.w - c + 1, (batch,), generator=g)
        flip = torch.randint(0, 2, (batch,), generator=g).bool()
        turns = torch.randint(0, 4, (batch,), generator=g)
        dev = self.stack.device
        span = torch.arange(c)
        rows = (top[:, None] + span).to(dev)[:, None, :, None]
        cols = (left[:, None] + span).to(dev)[:, None, None, :]
        chans = torch.arange(3, device=dev)[None, :, None, None]
        out = self.stack[idx.to(dev)[:, None, None, None], chans, rows, cols]
        out = torch.where(flip.to(dev)[:, None, None, None], out.flip(3), out)
        turns = turns.to(dev)[:, None, None, None]
        out = self._turn(out, turns)  # square crops: each sample takes the turn it drew
        return out.float().div_(255.0)

    @staticmethod
    def _turn(out: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        result = out
        for k in (1, 2, 3):
            result = torch.where(turns == k, torch.rot90(out, k, dims=(2, 3)), result)
        return result
