"""``arlm image sample``: the grid of samples (a row per class, rows of images whose class the model
drew) or of completions (originals, their given top rows, the model's bottom rows) as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arlm.config import ImageSampleConfig
from arlm.data.images import grid_size, save_grid, split_records
from arlm.data.loader import TokenData
from arlm.errors import UserError
from arlm.image.sampling import complete_images, sample_images
from arlm.io.outputs import PNG, Output, claim_file
from arlm.tokenizers.image import PixelTokenizer

MAX_GRID_PIXELS = 1 << 26  # 67M pixels (200 MB as RGB): far past any screen, and bounded before sampling


def _rows(images: list[np.ndarray], per_row: int) -> list[list[np.ndarray]]:
    return [images[i:i + per_row] for i in range(0, len(images), per_row)]


def sample_grid(lm, tok: PixelTokenizer, cfg: ImageSampleConfig) -> tuple[list[list[np.ndarray]], str]:
    labels = [tok.classes[tok.label_id(c) - tok.n_colors] for c in cfg.label] if cfg.label else list(tok.classes)
    unconditional = cfg.unconditional or (0 if tok.classes else cfg.per_label)
    wanted = [c for c in labels for _ in range(cfg.per_label)] + [None] * unconditional
    drawn = sample_images(lm.model, tok, wanted, cfg.temperature, cfg.top_k, cfg.seed)
    rows = _rows([img for _, img in drawn[:len(wanted) - unconditional]], cfg.per_label)
    rows += _rows([img for _, img in drawn[len(wanted) - unconditional:]], cfg.per_label)
    what = f"{len(labels)} classes x {cfg.per_label}" if labels else ""
    free = [c for c, _ in drawn[len(wanted) - unconditional:]]
    if unconditional:
        chosen = f" (classes drawn: {' '.join(c for c in free if c is not None)})" if tok.classes else ""
        what += (" + " if what else "") + f"{unconditional} unconditional{chosen}"
    return rows, f"sampled {what}"


def completion_grid(lm, tok: PixelTokenizer, cfg: ImageSampleConfig) -> tuple[list[list[np.ndarray]], str]:
    data = TokenData.open_matching(cfg.complete, tok, "complete images from the folder the model was trained on")
    pixels, labels = split_records(data.val, tok)
    pixels, labels = pixels[:cfg.count], labels[:cfg.count]
    given = cfg.rows_given or tok.height // 2
    done = complete_images(lm.model, tok, pixels, labels, given, cfg.temperature, cfg.top_k, cfg.seed)
    originals = [tok.decode(p.tolist()) for p in pixels]
    tops = [tok.decode(p[:given * tok.width].tolist()) for p in pixels]  # the rest left black
    return [originals, tops, done], f"completed {len(done)} test images from their top {given} of {tok.height} rows " \
                                    f"(rows: originals, given, completions)"


def sample_output(cfg: ImageSampleConfig, model_dir: str) -> Path:
    """--out, checked before the model loads (arlm/io/outputs.py): never inside the model or data folder, and an
    existing file only if it is an earlier grid of this command (or a PNG, with --overwrite)."""
    return claim_file(cfg.out, "--out", Output(PNG, "image sample"), overwrite=cfg.overwrite,
                      input_folders=[("model folder", model_dir), ("data folder", cfg.complete)])


def check_grid(tok: PixelTokenizer, cfg: ImageSampleConfig) -> None:
    """The grid's size in pixels, bounded before anything is sampled."""
    if cfg.complete:
        rows, cols = 3, cfg.count
    else:
        per_class = len(cfg.label or tok.classes) * cfg.per_label
        free = cfg.unconditional or (0 if tok.classes else cfg.per_label)
        rows, cols = -(-per_class // cfg.per_label) + -(-free // cfg.per_label), cfg.per_label
    w, h = grid_size(rows, cols, tok.height, tok.width, cfg.scale)
    if w * h > MAX_GRID_PIXELS:
        raise UserError(f"the grid would be {w:,}x{h:,} pixels, more than {MAX_GRID_PIXELS:,}; lower --scale, "
                        f"--per-label, --count or --unconditional")


def draw(lm, tok: PixelTokenizer, cfg: ImageSampleConfig, out: Path):
    """Sample or complete as ``cfg`` says and write the PNG to ``out`` (from :func:`sample_output`); what was drawn."""
    check_grid(tok, cfg)
    rows, caption = completion_grid(lm, tok, cfg) if cfg.complete else sample_grid(lm, tok, cfg)
    save_grid(rows, out, cfg.scale, tok.max_value)
    return caption
