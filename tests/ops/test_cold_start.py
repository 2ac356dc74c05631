"""Cold start (issue 22): the first eager call of an op on CPU (cpp and reference backends) does
not import the compiler stack or triton.

``torch.library.custom_op`` wraps each kernel in ``torch._disable_dynamo``, whose first call imports
``torch._dynamo`` (and with it sympy, the symbolic-shapes machinery and, through
``has_triton_package``, triton): ~870 modules and ~1.5 s before a tiny call. ``fastattr.ops._utils.
eager_without_compiler`` calls the kernel directly while Dynamo is not imported. Each check runs in
a fresh interpreter, since this test process may already have imported any of these.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from fastattr import _backend

HEAVY = ("torch._dynamo", "torch._inductor", "sympy", "triton")

CALL_EVERY_OP = """
import sys
import torch
import fastattr
from fastattr.ops import cd_bias_split, path_accumulate, path_interpolate, perturb_by_rank, sparsemax

backend = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
base = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
alphas = torch.tensor([0.25, 0.75], dtype=torch.float64)
path = path_interpolate(x, base, alphas, backend=backend)
acc = path_accumulate(torch.zeros(2, 3, 4, 4, dtype=torch.float64), path.reshape(2, 2, 3, 4, 4),
                      torch.tensor([0.5, 0.5], dtype=torch.float64), x - base, backend=backend)
rank = torch.stack([torch.randperm(16), torch.randperm(16)])
pert = perturb_by_rank(x, base, rank, torch.tensor([0, 4, 16]), insert=True, backend=backend)
y = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
cd = cd_bias_split(y, torch.randn(5, dtype=torch.float64), 1, True, backend=backend)
p = sparsemax(torch.randn(4, 6, dtype=torch.float64, requires_grad=True), backend=backend)
loss = acc.square().sum() + pert.square().sum() + cd.square().sum() + (p * torch.arange(6.0)).sum()
loss.backward()  # every op's autograd, sparsemax_backward and path_accumulate (via the VJPs) included
assert x.grad is not None and y.grad is not None
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""

INTEGRATED_GRADIENTS = """
import sys
import torch
import fastattr
from fastattr.zoo import load_digits, load_digits_cnn

model, (x, y) = load_digits_cnn(), load_digits("test", 8)
with fastattr.use_backend(sys.argv[1]):
    attr = fastattr.integrated_gradients(model, x, y, n_steps=2)
assert attr.shape == x.shape and torch.isfinite(attr).all()
print(" ".join(m for m in {heavy!r} if m in sys.modules))
"""

CPU_BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.skipif(not _backend.cpp_available(),
                                                 reason="the fastattr._C extension is not built")),
]


def _imported_after(script: str, backend: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTATTR_BACKEND"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script).format(heavy=HEAVY), backend],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_first_eager_call_of_every_op_imports_no_compiler_stack(backend):
    assert _imported_after(CALL_EVERY_OP, backend) == []


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_first_integrated_gradients_call_imports_no_compiler_stack(backend):
    assert _imported_after(INTEGRATED_GRADIENTS, backend) == []


def test_kernels_go_through_dynamo_disable_once_dynamo_is_imported():
    """Once ``torch._dynamo`` is imported, every kernel runs through torch's own
    ``torch._disable_dynamo`` wrapper again, i.e. under ``torch._dynamo.disable``: the shortcut only
    applies while Dynamo cannot be evaluating frames."""
    script = """
    import sys
    import torch
    import torch._dynamo
    import fastattr

    disabled = []
    real_disable = torch._dynamo.disable

    def spy(fn=None, *args, **kwargs):
        disabled.append(fn)
        return real_disable(fn, *args, **kwargs)

    torch._dynamo.disable = spy
    ops = sys.modules["fastattr.ops.sparsemax"]
    x = torch.randn(3, 4, requires_grad=True)
    fastattr.sparsemax(x, backend="reference").sum().backward()
    kernels = [op._backend_fns[None].__wrapped__ for op in (ops._sparsemax_op, ops._sparsemax_backward_op)]
    print(all(any(k is f for f in disabled) for k in kernels))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]
