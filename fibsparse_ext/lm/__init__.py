"""The research harness around the library: a small language model whose only
varying part is the attention pattern (models.py), byte-level data with nothing
to download (data.py), generation through the bounded KV caches (generation.py)
and the experiments that reproduce the paper's claims (experiments/).

The library (fibsparse_ext) never imports this package."""
from .data import ByteCorpus
from .generation import generate
from .models import FibSparseLM, LMConfig

__all__ = ["ByteCorpus", "FibSparseLM", "LMConfig", "generate"]
