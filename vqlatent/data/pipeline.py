"""Old import path of the data layer's public API (use `vqlatent.data` itself).

Kept so that `from vqlatent.data import pipeline` and `pipeline.DatasetSpec` in
code written before the split keep working; it holds no code of its own.
"""

from vqlatent.data import *  # noqa: F403
from vqlatent.data import __all__  # noqa: F401
