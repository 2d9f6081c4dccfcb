"""Images in and out: readers (scikit-learn's bundled digits, a folder of PNG/JPEG files through Pillow),
``arlm image prepare`` (images -> pixel tokenizer + shards of whole-image records) and the PNG grid writer.

A prepared image folder has the same four files as a text one (train.bin, val.bin, meta.json,
tokenizer.json), so ``arlm train`` trains on it unchanged. Its meta.json adds ``modality: "image"``
and ``record_tokens``: every image is one record of that many tokens (arlm/tokenizers/image.py), and
training windows start at record boundaries, so a token's position in the window is its pixel's
position in the image.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arlm.config import ImagePrepareConfig, image_size
from arlm.data.prepare import check_output, write_prepared
from arlm.errors import UserError
from arlm.io.atomic import atomic_file
from arlm.runtime import check_memory
from arlm.tokenizers.image import PixelTokenizer

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIGITS_MAX = 16  # scikit-learn's digits: 8x8 counts of set pixels in 4x4 blocks of 32x32 bitmaps, 0..16
MAX_IMAGE_PIXELS = 4096 * 4096  # the largest image arlm decodes (the largest --size)


@dataclass
class ImageSet:
    """Images (N, H, W) grey or (N, H, W, 3) RGB with their class names (None: unlabelled)."""

    images: np.ndarray
    labels: list[str] | None
    classes: list[str]
    max_value: int
    source: str


def digits() -> ImageSet:
    """scikit-learn's handwritten digits (1,797 images, 8x8, values 0..16), shipped with the library."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return ImageSet(d.images.astype(np.int64), [str(t) for t in d.target], [str(c) for c in range(10)], DIGITS_MAX,
                    "sklearn.datasets.load_digits")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def read_folder(folder: str | Path, size: tuple[int, int] | None, color: str) -> ImageSet:
    """PNG/JPEG files in ``folder`` (unlabelled) or in its subfolders (the subfolder names the class),
    converted to grey or RGB and resized to ``size`` (width, height) with Pillow."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--source {folder} is not a folder; give 'digits' or a folder of PNG/JPEG files")
    top = _image_files(root)
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _image_files(p))
    if top and subs:
        raise UserError(f"{root} holds images both at its top and in subfolders ({subs[0].name}/); put every image "
                        f"in a class subfolder, or none")
    files = [(f, None) for f in top] + [(f, s.name) for s in subs for f in _image_files(s)]
    if not files:
        raise UserError(f"{root} has no .png, .jpg or .jpeg files (nor subfolders holding some)")
    sizes = [_image_size(f) for f, _ in files]  # every header, before any image is decoded
    w, h = size or sizes[0]
    check_memory(len(files) * w * h * (3 if color == "rgb" else 1) * 8 * 2,
                 f"{len(files):,} images of {w}x{h}", "resize them with --size, or prepare fewer")
    images = []
    for f, _ in files:
        img = _read_image(f, color)
        if size is None:
            size = img.size
        images.append(np.asarray(img.resize(size) if img.size != size else img, dtype=np.int64))
    labels = [c for _, c in files] if subs else None
    log.debug("read %d images of %dx%d from %s", len(images), *size, root)
    return ImageSet(np.stack(images), labels, [s.name for s in subs], 255, str(root))


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header (Pillow reads no pixels for it), refused past
    MAX_IMAGE_PIXELS: a small file can declare a huge image (a 140 kB PNG of 12000x12000 decodes to 144 MB
    per channel, and more as numbers)."""
    from PIL import Image, UnidentifiedImageError

    too_big = "shrink it first (the pixel models train on small images: --size resizes to them)"
    try:
        with warnings.catch_warnings():  # Pillow warns past its own limit (89M pixels); ours, below, is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # the header only
                w, h = img.size
    except Image.DecompressionBombError:  # past twice Pillow's limit it refuses to open the file at all
        raise UserError(f"{path} declares over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, more than arlm reads "
                        f"({MAX_IMAGE_PIXELS:,}, e.g. 4096x4096); {too_big}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not an image Pillow can read ({e}); remove it or convert it to PNG") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise UserError(f"{path} is {w:,}x{h:,} pixels, more than arlm reads ({MAX_IMAGE_PIXELS:,}, e.g. 4096x4096); "
                        f"{too_big}")
    return w, h


def _read_image(path: Path, color: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("L" if color == "gray" else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path} is not an image Pillow can read ({e}); remove it or convert it to PNG") from None


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: scikit-learn's ``train_test_split`` (seed 0, 0.2: the split the image
    targets are stated on)."""
    from sklearn.model_selection import train_test_split

    if n < 2:
        raise UserError(f"{n} image(s) cannot be split into training and test images; give at least 2")
    train, test = train_test_split(np.arange(n), test_size=test_fraction, random_state=seed)
    return train, test  # train_test_split's shuffled order


def records(tok: PixelTokenizer, images: np.ndarray, labels: list[str] | None) -> np.ndarray:
    """Every image as one record ``[eot, label?, pixels]``, then a closing end-of-text (the last pixel's target)."""
    pixels = tok.encode_images(images)
    head = np.full((len(images), 1), tok.eot_id, dtype=np.int64)
    if tok.classes:
        head = np.concatenate([head, np.array([[tok.label_id(c)] for c in labels], dtype=np.int64)], axis=1)
    return np.concatenate([np.concatenate([head, pixels], axis=1).reshape(-1), [tok.eot_id]])


def shifted(images: np.ndarray, n: int) -> np.ndarray:
    """Each image, then its copies moved by (dy, dx) for every |dy|, |dx| <= n but (0, 0), image by
    image: (N (2n+1)^2, H, W[, 3]). What moves out is dropped; what comes in takes the image's most
    common border value (its background)."""
    out = []
    for img in images:
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).reshape(-1, *img.shape[2:])
        values, counts = np.unique(border, axis=0, return_counts=True)
        background = values[np.argmax(counts)]
        out.append(img)
        H, W = img.shape[:2]
        for dy in range(-n, n + 1):
            for dx in range(-n, n + 1):
                if dy or dx:
                    moved = np.empty_like(img)
                    moved[...] = background
                    moved[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
                        img[max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
                    out.append(moved)
    return np.stack(out)


def load_images(cfg: ImagePrepareConfig) -> ImageSet:
    if cfg.source == "digits":
        data = digits()
        if cfg.size and image_size(cfg.size) != (8, 8):
            raise UserError("the digits are 8x8; leave out --size (resize a folder of images instead)")
        if cfg.color == "rgb":
            raise UserError("the digits are grey; leave out --color rgb")
        return data
    return read_folder(cfg.source, image_size(cfg.size) if cfg.size else None, cfg.color)


def prepare_images(cfg: ImagePrepareConfig) -> dict:
    """Read, split, fit the tokenizer on the training images, write the folder atomically; the metadata."""
    cfg.validate()
    t0 = time.perf_counter()
    out = check_output(cfg.out)
    data = load_images(cfg)
    train, test = split(len(data.images), cfg.test_fraction, cfg.seed)
    labels = data.labels if cfg.labels else None
    classes = sorted(set(labels), key=data.classes.index) if labels else []
    levels = 0 if cfg.color == "rgb" else cfg.levels or (data.max_value + 1 if data.max_value < 255 else 16)
    tok = PixelTokenizer.fit(data.images[train], levels=levels,
                             max_value=data.max_value, palette_size=cfg.palette if cfg.color == "rgb" else 0,
                             classes=classes, seed=cfg.seed)
    pick = (lambda idx: [labels[i] for i in idx]) if labels else (lambda idx: None)
    copies = (2 * cfg.shift + 1) ** 2
    check_memory(len(train) * copies * data.images[0].size * 8 * 3, f"{len(train):,} training images with {copies - 1} "
                 f"shifted copies each", "lower --shift, or resize with --size")
    train_images = shifted(data.images[train], cfg.shift) if cfg.shift else data.images[train]
    train_labels = [c for c in pick(train) for _ in range(copies)] if labels else None
    train_ids, val_ids = records(tok, train_images, train_labels), records(tok, data.images[test], pick(test))
    meta = write_prepared(out, tok, train_ids, val_ids, modality="image", documents=len(data.images),
                          record_tokens=tok.record_tokens, val_fraction=cfg.test_fraction, shifted_copies=copies - 1,
                          split=f"train_test_split(test_size={cfg.test_fraction}, random_state={cfg.seed})",
                          sources=[data.source])
    meta.update(seconds=round(time.perf_counter() - t0, 2), train_images=len(train), test_images=len(test),
                classes=classes, height=tok.height, width=tok.width, colors=tok.n_colors)
    return meta


def split_records(ids: np.ndarray, tok: PixelTokenizer, every: int = 1) -> tuple[np.ndarray, list[str | None]]:
    """A prepared split's records back as colour ids (N, H*W) and labels (``every``: only each
    ``every``-th record, e.g. the original images of a training split with shifted copies)."""
    R = tok.record_tokens
    n = (len(ids) - 1) // R
    rec = np.asarray(ids[:n * R], dtype=np.int64).reshape(n, R)[::every]
    if n == 0 or (rec[:, 0] != tok.eot_id).any():
        raise UserError("the split does not hold whole image records; run `arlm image prepare` again")
    labels = [tok.label_of(int(t)) for t in rec[:, 1]] if tok.classes else [None] * len(rec)
    return rec[:, R - tok.pixels:], labels


def grid_size(rows: int, cols: int, height: int, width: int, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` x ``cols`` images with 1-pixel borders, drawn ``scale`` times."""
    return ((width + 1) * cols + 1) * scale, ((height + 1) * rows + 1) * scale


def save_grid(rows: list[list[np.ndarray]], path: str | Path, scale: int = 8, max_value: int = 255,
              verb: str = "image sample") -> Path:
    """Images (H, W) or (H, W, 3), a list per grid row, as one PNG with a 1-pixel border between
    images; grey values are stretched from 0..max_value to 0..255. Written atomically, marked as made
    by ``arlm VERB`` (the PNG ``Software`` text; arlm/io/outputs.py)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from arlm.io.outputs import software

    H, W = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    rgb = rows[0][0].ndim == 3
    canvas = np.full(((H + 1) * len(rows) + 1, (W + 1) * cols + 1) + ((3,) if rgb else ()), 128, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            pixels = img if rgb else np.rint(np.asarray(img, dtype=np.float64) * 255 / max_value)
            canvas[1 + i * (H + 1):1 + i * (H + 1) + H, 1 + j * (W + 1):1 + j * (W + 1) + W] = pixels
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    info = PngInfo()
    info.add_text("Software", software(verb))
    with atomic_file(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=info)
    return Path(path)
