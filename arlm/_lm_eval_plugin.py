"""Startup hook that names arlm's model in lm-evaluation-harness's registry (``lm_eval --model arlm``).

The harness finds models only in its own registry, filled when ``lm_eval.models`` is imported; it has
no plugin entry point for models. ``arlm-lm-eval.pth`` (installed beside the package, see setup.py)
imports this module at interpreter start; it only adds a finder that, once ``lm_eval.models`` has
been imported, registers ``arlm`` lazily ("arlm.lm_eval_model:ArlmLM", imported when used). Nothing
else is imported, and a Python that never imports lm_eval is not affected.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "lm_eval.models"


def _register() -> None:
    try:
        from lm_eval.api.registry import model_registry

        if "arlm" not in model_registry:
            model_registry.register("arlm", target="arlm.lm_eval_model:ArlmLM")
    except Exception:  # an lm_eval this hook does not know: leave it alone (register() by hand still works)
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
