"""Triton kernels for CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``).

Modules here import triton at import time; fastattr imports them lazily, only when the triton
backend runs, so a CPU-only install never needs triton.
"""
