"""Image folders, preprocessing and the decoded-image cache.

Only numpy and Pillow: the same code prepares evaluation and calibration images on a workstation and on a
Jetson, without torch. Two folder layouts are read:

- `labels.txt` beside the images, one `<relative path> <class index>` per line;
- ImageFolder: one sub-folder per class, classes numbered in sorted order.

Images are decoded, resized and center-cropped once and cached as uint8 (N, H, W, 3) arrays keyed by the
files' content hashes and the preprocessing, so later stages and later runs skip decoding. Normalisation is
applied on the fly (cheap, and it keeps the cache four times smaller than float32).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import UserError
from compress.core.store import atomic_path, sha256_file, sha256_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the model's input; it must match what the weights were trained with."""

    resize: int = 256  # shorter side, before the crop
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    color: str = "RGB"

    def __post_init__(self) -> None:  # also read back from files that travel: check it all
        import math

        ok = (isinstance(self.resize, int) and isinstance(self.crop, int) and 8 <= self.crop <= self.resize <= 4096
              and self.interpolation in ("bilinear", "bicubic", "nearest") and self.color == "RGB"
              and all(len(v) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
                      for v in (self.mean, self.std)) and min(self.std) > 0)
        if not ok:
            raise ValueError(f"not a valid preprocessing: {str(self.to_dict())[:200]}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def transform(self, image) -> np.ndarray:
        """PIL image -> uint8 (crop, crop, 3), as torchvision's Resize(resize) + CenterCrop(crop) on PIL."""
        from PIL import Image

        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[self.interpolation]
        image = to_8bit(image).convert(self.color)
        w, h = image.size
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        image = image.resize(size, resample)
        w, h = image.size
        top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), scaled to 0..1 and standardised."""
        x = pixels.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Unsupported(ValueError):
    """An image whose pixels cannot be mapped to 8-bit RGB without guessing."""


def to_8bit(image):
    """Pillow's RGB conversion clips 16-bit and 32-bit integer pixels at 255 (a 16-bit PNG turns almost white):
    scale them to 8 bits first. Floating-point pixels have no agreed range: refused."""
    from PIL import Image

    if image.mode == "F" or image.mode.startswith("RGBa") or image.mode.startswith("RGBX;16"):
        raise Unsupported(f"{image.mode} pixels")
    if image.mode.startswith("I"):  # I, I;16, I;16B, ...: one channel of 16 or 32-bit integers
        a = np.asarray(image).astype(np.int64)
        bits = 16 if image.mode.startswith("I;16") or a.max(initial=0) <= 65535 else 32
        a = np.clip(a, 0, (1 << bits) - 1) >> (bits - 8)
        return Image.fromarray(a.astype(np.uint8), "L")
    return image


MAX_PIXELS = 64_000_000  # decoded size bound: a larger image is a decompression bomb or not a photo


@dataclass
class ImageSet:
    """Decoded images of one folder: pixels (N, H, W, 3) uint8, labels (N,), and the files they came from."""

    root: str
    names: list[str]
    labels: np.ndarray
    pixels: np.ndarray
    hashes: list[str]
    skipped: list[str]
    key: str

    def __len__(self) -> int:
        return len(self.names)

    def head(self, n: int) -> ImageSet:
        """The first n images, as a set of their own."""
        return ImageSet(self.root, self.names[:n], self.labels[:n], self.pixels[:n], self.hashes[:n], [],
                        f"{self.key}[:{n}]")

    def sample(self, n: int, seed: int = 0) -> ImageSet:
        """A fixed pseudo-random n of the images (with seed 0, the ones `load` picks with limit n), as a set of
        their own."""
        if n >= len(self):
            return self
        return self.take(sorted(sample(list(range(len(self))), n, seed)), f"sample {n}, seed {seed}")

    def take(self, indices: list[int], what: str) -> ImageSet:
        """The images at `indices`, as a set of their own whose key says `what` they are of this one."""
        return ImageSet(self.root, [self.names[i] for i in indices], self.labels[indices], self.pixels[indices],
                        [self.hashes[i] for i in indices], [], f"{self.key}[{what}]")

    def batches(self, preprocess: Preprocess, batch_size: int):
        """Yield (normalised float32 NCHW batch, labels) pairs."""
        for i in range(0, len(self), batch_size):
            yield preprocess.normalize(self.pixels[i : i + batch_size]), self.labels[i : i + batch_size]


def list_images(root: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(relative path, class index) for every image of a folder, in a stable order. Nothing outside the folder is
    ever named: labels.txt entries that lead outside it (``..``, absolute, or through a symlink) are refused, and
    class folders or files that are symlinks to elsewhere are left out with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}", "pass a folder with labels.txt or class sub-folders")
    real = root.resolve()
    labels_file = root / "labels.txt"
    if labels_file.exists() or labels_file.is_symlink():
        if not labels_file.is_file() or not labels_file.resolve().is_relative_to(real):
            raise UserError(f"{labels_file} is not a file inside {root}", "labels.txt must be a plain file there")
        try:
            text = labels_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{labels_file} is not UTF-8 text", "one '<path> <class index>' per line") from None
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit() or len(parts[1]) > 9:
                raise UserError(f"{labels_file}:{n}: expected '<relative path> <class index>'",
                                "the class index is a whole number, 0 or more")
            rel = parts[0]
            if Path(rel).is_absolute() or ".." in Path(rel).parts or not (root / rel).resolve().is_relative_to(real):
                raise UserError(f"{labels_file}:{n}: the image path leads outside {root}",
                                "paths in labels.txt are relative to its folder and stay inside it")
            items.append((rel, int(parts[1])))
        if not items:
            raise UserError(f"{labels_file} lists no images", "one '<relative path> <class index>' per line")
        return items
    classes, outside = [], []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            (classes if p.resolve().is_relative_to(real) else outside).append(p.name)
    items = []
    for idx, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            if f.resolve().is_relative_to(real):
                items.append((str(f.relative_to(root)), idx))
            else:
                outside.append(str(f.relative_to(root)))
    if outside:
        print(f"warning: {root}: left out {len(outside)} symlink(s) that lead outside the folder, e.g. "
              f"{outside[0]}", file=sys.stderr)
    if not items:
        raise UserError(f"no images found in {root}", "expected labels.txt or one sub-folder of images per class")
    return items


def sample(items: list, limit: int | None, seed: int = 0) -> list:
    """A fixed pseudo-random subset, so that a limit still spans the classes of a class-sorted folder."""
    if limit is None or limit >= len(items):
        return list(items)
    return random.Random(seed).sample(items, limit)


def load(
    root: str | os.PathLike[str],
    preprocess: Preprocess,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: str | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    max_pixels: int = MAX_PIXELS,
) -> ImageSet:
    """Decode (or reuse from the cache) up to `limit` images of a folder, leaving out the names in `exclude` and
    refusing images over `max_pixels` decoded pixels."""
    from PIL import Image

    root = Path(root)
    items = sample([item for item in list_images(root) if item[0] not in exclude], limit)
    present = [(rel, idx) for rel, idx in items if (root / rel).is_file()]
    missing = [rel for rel, _ in items if not (root / rel).is_file()]
    hashes = [sha256_file(root / rel) for rel, _ in present]
    what = {"files": [[rel, idx, h] for (rel, idx), h in zip(present, hashes)], "preprocess": preprocess.to_dict()}
    if max_pixels != MAX_PIXELS:  # another bound may skip other images (the default keeps the keys it always had)
        what["max_pixels"] = max_pixels
    key = sha256_json(what)[:16]
    cache = Path(cache_dir) / f"images-{key}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        cached = _read_cache(cache, root, key)
        if cached is not None:
            return cached

    names, labels, pixels, kept_hashes, skipped = [], [], [], [], list(missing)
    iterator = zip(present, hashes)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(present), desc=progress, unit="img", file=sys.stderr, leave=False)
    for (rel, idx), h in iterator:
        try:
            with Image.open(root / rel) as im:
                if im.width * im.height > max_pixels:
                    raise Unsupported(f"{im.width}x{im.height} pixels")
                pixels.append(preprocess.transform(im))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # Pillow's errors for truncated, non-image or oversized files; Unsupported for pixel formats
            skipped.append(f"{rel} ({exc})" if isinstance(exc, Unsupported) else rel)
            continue
        names.append(rel)
        labels.append(idx)
        kept_hashes.append(h)
    if skipped:
        shown = ", ".join(x[:80] for x in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"warning: {root}: skipped {len(skipped)} unreadable image(s): {shown}", file=sys.stderr)
    if not names:
        raise UserError(f"no usable images in {root}", "check the folder and its labels.txt")
    images = ImageSet(str(root), names, np.asarray(labels, np.int64), np.stack(pixels), kept_hashes, skipped, key)
    if cache is not None:
        meta = json.dumps({"names": names, "hashes": kept_hashes, "skipped": skipped,
                           "pixels_sha256": _digest(images.pixels, images.labels)})
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, pixels=images.pixels, labels=images.labels, meta=np.asarray(meta))
    return images


def _digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(pixels).data)
    h.update(np.ascontiguousarray(labels.astype(np.int64)).data)
    return h.hexdigest()


def _read_cache(cache: Path, root: Path, key: str) -> ImageSet | None:
    """A decoded-image cache whose content matches its recorded digest; None (decode again) if it is damaged,
    truncated or altered."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            pixels, labels = z["pixels"], z["labels"]
        if meta.get("pixels_sha256") != _digest(pixels, labels) or len(meta["names"]) != len(pixels):
            raise ValueError("content does not match its digest")
    except Exception as exc:  # np.load raises many kinds for a damaged file
        print(f"warning: {cache.name}: unusable decoded-image cache ({type(exc).__name__}), decoding again",
              file=sys.stderr)
        return None
    return ImageSet(str(root), meta["names"], labels, pixels, meta["hashes"], meta["skipped"], key)


def overlap(a: ImageSet, b: ImageSet) -> list[str]:
    """Names in `a` whose content also appears in `b` (evaluation images that were also calibration images)."""
    seen = set(b.hashes)
    return [n for n, h in zip(a.names, a.hashes) if h in seen]
