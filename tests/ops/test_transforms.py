"""The differentiable ops under ``torch.func`` (``jacfwd``, ``jacrev``, ``jvp``, ``hessian``) and forward-mode AD
(``torch.autograd.forward_ad``), on every backend: each transform's derivative equals the op's own reverse-mode
Jacobian (its registered backward, through ``torch.autograd``). A custom op with a ``torch.library`` backward gets
a zero tangent from ``torch.func.jvp`` and errors from ``torch.func.grad`` and forward AD (torch 2.13); the ops run
their reference formula there (:func:`fastattr.ops._utils.run_op`)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from fastattr.core import rank_features
from fastattr.ops import (bottleneck, cd_bias_split, group_gen, group_select, linear_impute, max_pool2d,
                          path_accumulate, path_interpolate, perturb_by_rank, simplex_qp, sparsemax, stencil_solve)


def _draw(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cases(device):
    """``name: (function of the differentiated tensors, those tensors)`` for each op, float64 on ``device``."""
    on = {}

    def put(name, fn, *args):
        on[name] = (fn, tuple(a.to(device) for a in args))

    put("sparsemax", lambda b: (lambda x: sparsemax(2 * x, -1, backend=b)), _draw(3, 6))
    alphas = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=device)
    put("path_interpolate", lambda b: (lambda x, x0: path_interpolate(x, x0, alphas, backend=b)),
        _draw(2, 6), _draw(2, 6, seed=1))
    weights, acc = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64, device=device), _draw(2, 6, seed=2).to(device)
    put("path_accumulate", lambda b: (lambda g, d: path_accumulate(acc, g, weights, d, backend=b)),
        _draw(3, 2, 6), _draw(2, 6, seed=1))
    rank, counts = rank_features(_draw(2, 6, seed=3)).to(device), torch.tensor([1, 4], device=device)
    put("perturb_by_rank", lambda b: (lambda x, x0: perturb_by_rank(x, x0, rank, counts, insert=True, backend=b)),
        _draw(2, 1, 6), _draw(2, 1, 6, seed=1))
    put("cd_bias_split", lambda b: (lambda y, bias: cd_bias_split(y, bias, 2, relu=True, backend=b)),
        _draw(6, 3, 4), _draw(3, seed=1))
    mu, sigma = _draw(2, 3, 3, seed=4).to(device), (torch.rand(2, 3, 3, dtype=torch.float64) + 0.5).to(device)
    eps = _draw(2, 2, 2, 3, 3, seed=5).to(device)
    put("bottleneck", lambda b: (lambda r, a: bottleneck(r, a, mu, sigma, eps, backend=b)),
        _draw(2, 2, 3, 3), _draw(2, 2, 3, 3, seed=1))
    slot = torch.tensor([[0, 2, 2], [1, 3, 0]], device=device)
    put("group_select", lambda b: (lambda z, w, q: group_select(z, slot, w, None, q, backend=b)),
        _draw(4, 5), _draw(3, 5, seed=1), _draw(3, 5, seed=2))
    bp, pos, wk = _draw(5, seed=3).to(device), _draw(4, 5, seed=4).to(device), _draw(10, 5, seed=5).to(device)
    put("group_gen", lambda b: (lambda x, wp, wq: group_gen(x, wp, bp, pos, wq, wk, 3, 2, backend=b)[0]),
        _draw(2, 4, 3), _draw(5, 3, seed=1), _draw(10, 5, seed=2))
    put("max_pool2d", lambda b: (lambda x: max_pool2d(x, 3, 2, 1, backend=b)[0]), _draw(2, 3, 7, 7, seed=6))
    return on


NAMES = list(_cases("cpu"))


def _flat(out):
    return torch.cat([t.reshape(-1) for t in (out if isinstance(out, tuple) else (out,))])


def _jacobian(fn, args):
    """``[outputs, inputs]``: the reverse-mode Jacobian through ``torch.autograd`` (the op's registered backward)."""
    parts = torch.autograd.functional.jacobian(lambda *a: _flat(fn(*a)), args)
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_reverse_transforms_agree_with_the_ops_backward(backend_device, name):
    backend, device = backend_device
    make, args = _cases(device)[name]
    fn = make(backend)
    expected = _jacobian(fn, args)
    assert expected.abs().max() > 0.1                                      # a derivative that a zero cannot match
    argnums = tuple(range(len(args)))
    for transform in (torch.func.jacfwd, torch.func.jacrev):
        parts = transform(lambda *a: _flat(fn(*a)), argnums=argnums)(*args)
        got = torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=f"{transform.__name__}")
    tangents = tuple(_draw(*a.shape, seed=9 + i).to(device) for i, a in enumerate(args))
    direction = torch.cat([t.reshape(-1) for t in tangents])
    _, jvp = torch.func.jvp(lambda *a: _flat(fn(*a)), args, tangents)
    torch.testing.assert_close(jvp, expected @ direction, rtol=1e-10, atol=1e-10)
    with fwAD.dual_level():
        dual = _flat(fn(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents))))
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, expected @ direction, rtol=1e-10, atol=1e-10)


def test_hessian_of_a_sparsemax_loss(backend_device):
    """``torch.func.hessian`` (forward over reverse) of ``Σ w ⊙ sparsemax(x)²``, against the reverse-mode Hessian."""
    backend, device = backend_device
    x, w = _draw(7).to(device), _draw(7, seed=1).to(device)

    def loss(v):
        return (w * sparsemax(v, -1, backend=backend) ** 2).sum()

    expected = torch.autograd.functional.hessian(loss, x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(torch.func.hessian(loss)(x), expected, rtol=1e-10, atol=1e-10)


def test_ops_torch_cannot_differentiate_refuse_the_transforms():
    """The imputation solve (its reference is scipy's) and ``simplex_qp`` (no derivative) raise under
    ``torch.func.jvp`` and forward AD rather than return a zero tangent; constants inside a transform still run."""
    x, removed = _draw(1, 1, 5, 5), torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 1:4, 1:4] = True
    G = _draw(2, 3, 3)
    G = G @ G.transpose(1, 2)
    for fn, arg in ((lambda t: linear_impute(t, removed), x), (lambda t: stencil_solve(t, removed), x),
                    (simplex_qp, G)):
        with pytest.raises(NotImplementedError, match="torch.func transforms or forward-mode AD"):
            torch.func.jvp(fn, (arg,), (torch.ones_like(arg),))
        with fwAD.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
            fn(fwAD.make_dual(arg, torch.ones_like(arg)))
        out, tangent = torch.func.jvp(lambda t: fn(arg).sum() + 0 * t.sum(), (arg,), (torch.ones_like(arg),))
        assert torch.equal(out, fn(arg).sum()) and tangent == 0                 # a constant argument runs the op


def test_at_the_edge_of_the_support_the_transforms_agree_with_the_backward(backend_device):
    """Inputs on the edge of sparsemax's support (``x = [1, 0]``: ``p = [1, 0]`` with ``z₂ = τ``) and of CD's
    fused ReLU (zero pre-activations, zero bias): the reference's derivative there is the registered
    backward's (0 at the edge), not ``clamp``'s (1), so the transforms give the same Jacobian as autograd."""
    backend, device = backend_device
    cases = [(lambda x: sparsemax(x, -1, backend=backend), torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)),
             (lambda y: cd_bias_split(y, torch.zeros(2, dtype=torch.float64, device=device), 1, relu=True,
                                      backend=backend), torch.zeros(2, 2, 3, dtype=torch.float64))]
    for fn, x in cases:
        x = x.to(device)
        expected = _jacobian(fn, (x,))
        for transform in (torch.func.jacfwd, torch.func.jacrev):
            got = transform(lambda v: _flat(fn(v)))(x).reshape(expected.shape)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_vmap_inside_forward_mode_and_a_bad_backend_under_a_transform():
    """``vmap`` of an op inside a forward-AD level and inside ``jvp`` runs (a vmap-wrapped tensor is not asked
    for a tangent), ``jvp(vmap(op))`` is right; a bad ``backend`` is the error of a plain call; an op without a
    derivative (``greedy_gains``) refuses rather than return a zero tangent."""
    x, t = _draw(3, 5), _draw(3, 5, seed=1)
    batched = torch.func.vmap(lambda v: sparsemax(v, -1, backend="cpp"))
    with fwAD.dual_level():
        assert torch.equal(batched(x), sparsemax(x, -1, backend="cpp"))
    _, got = torch.func.jvp(batched, (x,), (t,))
    torch.testing.assert_close(got, (_jacobian(lambda v: sparsemax(v, -1), (x,)) @ t.reshape(-1)).reshape(3, 5),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="backend must be one of"):
        torch.func.jacrev(lambda v: path_interpolate(v, v, torch.ones(1, dtype=v.dtype), backend="bogus"))(x)
    from fastattr.ops import greedy_gains
    from tests.ops.test_greedy_gains import _case
    z1, columns, weights, biases, selected = _case(2, 5, [4, 3], torch.float64, "cpu", 0)
    with pytest.raises(NotImplementedError, match="greedy_gains"):
        torch.func.jvp(lambda z: greedy_gains(z, columns, weights, biases, selected), (z1,), (torch.ones_like(z1),))
