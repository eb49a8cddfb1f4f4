"""`experiments.preemption` is `ltjax.cli.preemption` (moved into the package).

The same module object, so that monkeypatching `experiments.preemption.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import preemption as _module

sys.modules[__name__] = _module
