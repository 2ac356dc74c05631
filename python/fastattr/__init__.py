"""fastattr: fast feature attribution and faithfulness evaluation for PyTorch.

Fused kernels for the hot paths, each checked against a pure-torch reference, behind a thin,
Captum-like API and drop-in adapters (``fastattr.integrations``).
"""
from ._backend import available_backends, get_backend, use_backend
from .ops import sparsemax

__version__ = "0.1.0"

__all__ = ["available_backends", "get_backend", "sparsemax", "use_backend", "__version__"]
