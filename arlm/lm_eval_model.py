"""An lm-evaluation-harness model backed by arlm (``pip install -e ".[lmeval]"``)::

    lm_eval --model arlm --model_args path=runs/shakespeare --tasks my_task --include_path tasks/

``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` run through arlm's own scoring
(arlm/eval/fewshot.py) and generation engine, so the harness's figures equal ``arlm eval --task FILE
--few-shot K`` on the same file. The harness finds the name ``arlm`` through arlm's startup hook
(arlm/_lm_eval_plugin.py, installed as a ``.pth`` file); ``register()`` does the same by hand.

Model arguments: ``path`` (or ``pretrained``): a folder arlm loads; ``device``, ``precision``
(arlm.load's); ``batch_size`` (the harness's flag); ``max_gen_toks`` (default 256: new tokens of a
generation request that does not say).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import LM

from arlm.api import load
from arlm.errors import UserError

log = logging.getLogger(__name__)


def _batch_size(value: Any) -> int:
    """The harness passes --batch-size as given ("8", 8, or "auto": arlm's default then)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    if value in (None, "auto") or (isinstance(value, str) and value.startswith("auto")):
        return 8
    raise UserError(f"batch_size must be a positive integer or auto, got {value!r}")


class ArlmLM(LM):
    """arlm's model behind the harness's three request types."""

    def __init__(self, path: str | None = None, pretrained: str | None = None, device: str | None = None,
                 precision: str | None = None, batch_size: Any = 8, max_batch_size: Any = None,
                 max_gen_toks: int = 256, **unused):
        super().__init__()
        where = path or pretrained
        if not where:
            raise UserError("give the model folder: --model_args path=DIR")
        if unused:
            log.warning("arlm ignores these model arguments: %s", ", ".join(sorted(unused)))
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # the harness's --device defaults to cuda:0 whether or not there is a GPU
            log.warning("device %s asked for, but CUDA is not available here: running on %s", device, "the CPU")
            device = "cpu"
        options = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
        self.lm = load(where, **options)
        self.lm._scoring()  # a decoder-only language model with a text tokenizer, or a clear error now
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.lm.loglikelihood([tuple(r.args) for r in requests], self.batch_size)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self.lm.loglikelihood_rolling([r.args[0] for r in requests], self.batch_size)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, where a request asks) continuations cut at the first ``until`` string;
        requests with the same options are generated together."""
        groups: dict[str, list[int]] = {}
        options = []
        for i, r in enumerate(requests):
            ctx, kwargs = r.args
            opts = self._controls(dict(kwargs or {}))
            options.append(opts)
            groups.setdefault(repr(sorted(opts.items())), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            opts = options[members[0]]
            for s in range(0, len(members), self.batch_size):
                chunk = members[s:s + self.batch_size]
                texts = self.lm.generate([requests[i].args[0] for i in chunk], **opts)
                for i, text in zip(chunk, texts):
                    for stop in opts.get("stop", []):
                        text = text.split(stop)[0]
                    out[i] = text
        return out

    def _controls(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        sample = kwargs.pop("do_sample", False)
        temperature = float(kwargs.pop("temperature", 0.0))
        controls: dict[str, Any] = {"max_new_tokens": int(kwargs.pop("max_gen_toks", self.max_gen_toks)),
                                    "temperature": temperature if sample and temperature > 0 else 0.0}
        if until:
            controls["stop"] = until
        for k in ("top_p", "top_k", "seed"):
            if k in kwargs:
                controls[k] = kwargs.pop(k)
        if kwargs:
            log.warning("arlm ignores these generation arguments: %s", ", ".join(sorted(kwargs)))
        return controls


def register() -> None:
    """Make ``--model arlm`` known to the harness (the startup hook does this on its own)."""
    from lm_eval.api.registry import model_registry

    if "arlm" not in model_registry:
        model_registry.register("arlm", target=ArlmLM)
