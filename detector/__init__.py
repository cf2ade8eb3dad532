"""copyscan's engine: perceptual-hash candidates, CNN rerank, verdicts, storage.

Importing this package loads no model and does not import torch; the modules are
``imaging``, ``hashing``, ``index``, ``mih``, ``embedding``, ``matching``, ``store``, ``pipeline``,
``cataloging``, ``scanning``, ``dedupe``, ``sources``, ``report``, ``config``, ``errors``.
"""

__version__ = "0.1.0"
