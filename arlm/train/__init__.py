"""Training: the one loop (loop.py: the Trainer), what a resumed run restores (state.py), the run folder
(output.py), optimizer and schedules (optim.py), torchrun (distributed.py), MFU (throughput.py), sweeps.

``arlm.train(config)`` is the public training function, and ``arlm.train`` is also this package:
once a submodule is imported, Python rebinds the attribute ``arlm.train`` to the package. So the
package itself is made callable with the same signature, and both spellings keep working.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, config=None, callbacks=None, **overrides):
        from arlm.train.loop import train

        return train(config, callbacks, **overrides)


sys.modules[__name__].__class__ = _CallablePackage
