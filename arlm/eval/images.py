"""Image likelihoods in bits per dimension (per pixel), the measure of the PixelCNN and Image GPT
papers: -log2 p(image) / (H * W). Here a dimension is a pixel, coloured with one of the tokenizer's
colours (a grey level or a palette entry).

A model trained on records ``[eot, label, pixels]`` gives p(label) p(pixels | label); the likelihood of
the image alone is the sum over labels, log p(x) = logsumexp_c [log p(c) + log p(x | c)], computed
exactly with one pass per class. That is what is compared with the per-pixel independent baseline,
which knows no label either; p(x | true label) is reported beside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlm.tokenizers.image import PixelTokenizer

LN2 = math.log(2.0)


@torch.inference_mode()
def pixel_log_likelihoods(model: torch.nn.Module, tok: PixelTokenizer, pixels: np.ndarray, labels: list[str | None],
                          device: torch.device, batch_size: int = 256) -> np.ndarray:
    """(N,) natural-log likelihood of each image's pixels (N, H*W), given its record's prefix."""
    out = []
    for s in range(0, len(pixels), batch_size):
        prefix = [tok.prefix(label) for label in labels[s:s + batch_size]]
        ids = torch.tensor([p + row.tolist() for p, row in zip(prefix, pixels[s:s + batch_size])], device=device)
        logits, _ = model(ids[:, :-1])  # (B, T-1, V)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        out.append(logp[:, len(prefix[0]) - 1:].sum(1).double().cpu())  # the pixels' terms only
    return torch.cat(out).numpy()


@torch.inference_mode()
def label_log_probs(model: torch.nn.Module, tok: PixelTokenizer, device: torch.device) -> np.ndarray:
    """(C,) log p(label) of each class, the model's first choice after end-of-text."""
    logits, _ = model(torch.tensor([[tok.eot_id]], device=device))
    logp = torch.log_softmax(logits[0, -1].float(), dim=-1)
    return logp[tok.n_colors:tok.n_colors + len(tok.classes)].double().cpu().numpy()


def bits_per_dim(model: torch.nn.Module, tok: PixelTokenizer, pixels: np.ndarray, labels: list[str | None],
                 device: torch.device) -> dict[str, float]:
    """Mean bits per pixel of the images: of p(x) (labels summed out) and, for labelled models, of
    p(x | the true label)."""
    dims = len(pixels) * tok.pixels
    if not tok.classes:
        return {"bits_per_dim": float(-pixel_log_likelihoods(model, tok, pixels, labels, device).sum() / dims / LN2)}
    prior = label_log_probs(model, tok, device)
    joint = np.stack([prior[c] + pixel_log_likelihoods(model, tok, pixels, [name] * len(pixels), device)
                      for c, name in enumerate(tok.classes)], axis=1)  # (N, C)
    top = joint.max(1, keepdims=True)
    marginal = (top[:, 0] + np.log(np.exp(joint - top).sum(1)))  # logsumexp over classes
    true = [tok.classes.index(lab) for lab in labels]
    conditional = joint[np.arange(len(pixels)), true] - prior[true]  # log p(x | c), already computed for every c
    return {"bits_per_dim": float(-marginal.sum() / dims / LN2),
            "bits_per_dim_given_label": float(-conditional.sum() / dims / LN2),
            "label_accuracy": float(np.mean([tok.classes[i] == lab for i, lab in zip(joint.argmax(1), labels)]))}


def independent_bits_per_dim(train: np.ndarray, test: np.ndarray, n_colors: int, smoothing: float = 1.0) -> float:
    """The per-pixel independent baseline: each pixel position's own colour histogram over the training
    images (add-``smoothing`` counts, Laplace's rule by default), scored on the test images."""
    counts = np.stack([np.bincount(train[:, j], minlength=n_colors) for j in range(train.shape[1])]) + smoothing
    p = counts / counts.sum(1, keepdims=True)  # (H*W, colours)
    return float(-np.log2(p[np.arange(test.shape[1]), test]).mean())
