"""The rule training/__init__.py states: the package imports no other graft package (the trainer's
process and a Ray training task run it alone), checked in a fresh interpreter."""

import subprocess
import sys

CHECK = """
import pkgutil, sys, training
for module in pkgutil.iter_modules(training.__path__):
    __import__(f"training.{module.name}")
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"service", "indexer", "adapters_store", "evaluation"})))
"""


def test_training_imports_no_other_graft_package():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"training imports {done.stdout.strip()}"
