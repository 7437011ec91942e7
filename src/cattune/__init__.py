"""cattune: Causal Attention Tuning for Hugging Face causal language models.

The pipeline, one module (or package) per stage::

    data -> annotate -> masks -> loss + trainer -> evaluate -> report
"""

__version__ = "0.1.0"
