"""Not part of the package: this file only keeps a clone of advx from shadowing the installed one.

Python treats a folder named ``advx`` in the working directory (a clone of this repository)
as a namespace package ``advx`` that hides the installed package, so ``import advx`` from
the folder holding the clone would give an empty module. With this file the clone is a
regular package whose import hands over to the installed advx (found with the clone's
parent folder left out of the search path).
"""

import importlib
import os
import sys

if __name__ == "advx":  # imported as the package (not, e.g., by a test runner walking the repo)
    _parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    del sys.modules[__name__]
    _saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _parent]
    try:
        sys.modules[__name__] = importlib.import_module(__name__)
    finally:
        sys.path[:] = _saved
