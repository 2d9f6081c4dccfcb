"""Everything about the package is in pyproject.toml; this file only adds arlm-lm-eval.pth, the
startup hook that lets ``lm_eval --model arlm`` find arlm's model (arlm/_lm_eval_plugin.py), to the
top of the install (site-packages), where Python reads .pth files. setuptools has no setting for a
file there."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "arlm-lm-eval.pth"


class BuildWithHook(build_py):
    def run(self):
        super().run()
        self.copy_file(str(Path(__file__).parent / PTH), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildWithHook})
