"""arlm: autoregressive language models, from corpus to checkpoint to generated text.

The top-level names are imported lazily so ``import arlm`` stays cheap (no torch import until used)::

    import arlm
    m = arlm.load("runs/shakespeare")          # model + tokenizer
    print(m.generate("ROMEO:", max_new_tokens=100, temperature=0.8, seed=1))
    print(m.perplexity("To be, or not to be, that is the question."))
"""

__all__ = ["load", "train", "pipeline", "UserError", "__version__"]

from arlm.errors import UserError
from arlm.version import __version__


def load(path, device=None, precision=None):
    """Load a checkpoint, training output or Hugging Face folder as a :class:`arlm.api.LanguageModel`
    (``device``: cpu, cuda, mps or auto; ``precision``: float32, bfloat16, int8 or auto; defaults in
    arlm.config.LoadConfig)."""
    from arlm.api import load as _load

    options = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
    return _load(path, **options)


def pipeline(task, model, device=None, precision=None, batch_size=8, **options):
    """transformers' ``pipeline(task, model=...)`` on an arlm model: text-generation, text-classification,
    token-classification, question-answering, summarization, translation, text2text-generation and
    feature-extraction, with their return shapes (see :mod:`arlm.pipelines`)."""
    from arlm.pipelines import pipeline as _pipeline

    return _pipeline(task, model, device, precision, batch_size, **options)


def train(config=None, callbacks=None, **overrides):
    """Train a model; ``config`` is a :class:`arlm.config.TrainConfig`, a dict, or a TOML path. Returns a summary dict.

    (After ``arlm.train`` the package is imported, this name is the package, which is callable the same way.)
    """
    from arlm.train.loop import train as _train

    return _train(config, callbacks, **overrides)
