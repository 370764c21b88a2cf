"""The compiled kernels equal the reference ones, never recompile for new numbers, and fall back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch as rt
from regtorch import kernels
from regtorch.kernels import _choose
from regtorch.kernels import elastic_net as en

pytestmark = pytest.mark.skipif(
    not kernels.compiled_available("cpu"), reason="no C++ compiler for torch.compile on this machine"
)

N = kernels.COMPILED_MIN_TENSOR + 7  # large enough for the fused path, odd-sized


def _tensors(dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(N, generator=g).to(dtype), torch.randn(40, N // 40, generator=g).to(dtype)]


ELEMENTWISE = [rt.L1(0.3), rt.L2(0.2), rt.ElasticNet(l1=0.1, l2=0.4), rt.L1(0.1) + rt.L2(0.05)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("penalty", ELEMENTWISE, ids=repr)
def test_fused_paths_equal_eager_paths(penalty, dtype) -> None:
    tensors = _tensors(dtype)
    tol = {"rtol": 2e-2, "atol": 3e-2} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-7}
    grads_eager = [torch.randn_like(t) for t in tensors]
    grads_fused = [g.clone() for g in grads_eager]
    penalty.add_grad_(tensors, grads_eager, alpha=0.7, fused=False)
    penalty.add_grad_(tensors, grads_fused, alpha=0.7, fused=True)
    for a, b in zip(grads_eager, grads_fused, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(
        penalty.grad(tensors, fused=False, scale=1.5),
        penalty.grad(tensors, fused=True, scale=1.5),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **tol)
    eager, fused = [t.clone() for t in tensors], [t.clone() for t in tensors]
    penalty.prox(eager, 0.37, fused=False)
    penalty.prox(fused, 0.37, fused=True)
    for a, b in zip(eager, fused, strict=True):
        torch.testing.assert_close(
            a, b, rtol=0, atol=0
        ) if dtype != torch.bfloat16 else torch.testing.assert_close(a, b, **tol)


def test_fused_prox_with_a_group_term_equals_eager() -> None:
    penalty = rt.L1(0.05) + rt.GroupLasso(0.3) + rt.L2(0.1)
    eager = [torch.randn(64, N // 64)]
    fused = [eager[0].clone()]
    penalty.prox(eager, 0.5, fused=False)
    penalty.prox(fused, 0.5, fused=True)
    torch.testing.assert_close(eager[0], fused[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(eager[0] == 0, fused[0] == 0)


def test_changing_strength_lr_and_size_never_recompiles() -> None:
    from torch._dynamo.utils import counters

    penalty = rt.ElasticNet(l1=0.1, l2=0.1)
    w = torch.randn(N)
    penalty.prox([w], 0.1, fused=True)  # warm up: compile once for this dtype
    penalty.add_grad_([w], [torch.zeros_like(w)], fused=True)
    before = dict(counters["stats"])
    for step, size in ((0.2, N + 100), (0.05, 2 * N), (1.0, N + 3)):
        penalty.l1, penalty.l2 = step, step / 2
        v = torch.randn(size)
        penalty.prox([v], step, fused=True)
        penalty.add_grad_([v], [torch.zeros_like(v)], fused=True)
    assert dict(counters["stats"]).get("unique_graphs") == before.get("unique_graphs")


def test_small_or_strided_tensors_take_the_reference_kernels() -> None:
    small, strided = torch.randn(10), torch.randn(N, 2)[:, 0]
    assert not kernels.compiled_eligible(small) and not kernels.compiled_eligible(strided)
    ref = [small.clone(), strided.clone()]
    en.prox_(ref, 0.1, 1.2, "reference")
    en.prox_([small, strided], 0.1, 1.2, "compiled")
    for a, b in zip(ref, [small, strided], strict=True):
        assert torch.equal(a, b)


def test_one_chooser_decides_by_arguments_and_size() -> None:
    tiny, big = [torch.zeros(10)], [torch.zeros(kernels.COMPILED_MIN_NUMEL)]
    assert kernels.choose(tiny, None, None) == "foreach"  # small CPU tensors: one multi-tensor call
    assert kernels.choose(tiny, None, True) == "compiled"
    assert kernels.choose(tiny, False, None) == "reference"
    assert kernels.choose(big, None, None) == "compiled"
    assert kernels.choose(big, None, False) == "reference"  # large CPU tensors: one at a time
    assert kernels.choose(big, True, False) == "foreach"
    assert kernels.choose([], None, True) == "reference"


def test_compile_failure_warns_once_and_falls_back(monkeypatch) -> None:
    def broken(function, **options):
        def fail(*args):
            raise RuntimeError("no compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_choose, "_broken", False)
    run = kernels.compiled(lambda w: w * 2)
    w = torch.randn(N)
    with pytest.warns(RuntimeWarning, match="could not compile its fused kernels .*no compiler"):
        assert run(w) is kernels.FAILED
    assert not kernels.compiled_available("cpu")  # stays eager for the rest of the process
    assert kernels.choose([w], None, True) != "compiled"
    monkeypatch.setattr(_choose, "_broken", False)


def test_a_penalty_falls_back_to_the_reference_kernels(monkeypatch) -> None:
    monkeypatch.setattr(_choose, "_broken", True)  # as after a failed compilation
    w = torch.randn(N)
    expected = torch.nn.functional.softshrink(w, 0.2)
    rt.L1(1.0).prox([w], 0.2, fused=True)
    torch.testing.assert_close(w, expected, rtol=0, atol=0)


def test_regularizer_fused_grad_mode_equals_eager() -> None:
    def run(fused):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rt.regularize(model, opt, rt.ElasticNet(l1=1e-3, l2=1e-3), mode="grad", fused=fused)
        x = torch.randn(16, 256)
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _loss_mode(penalty, tensors, fused, scale):
    params = [nn.Parameter(t.clone()) for t in tensors]
    value = penalty.value(params, fused=fused)
    (scale * value).backward()
    return value, [p.grad for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("penalty", ELEMENTWISE, ids=repr)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_fused_loss_mode_equals_eager_and_float64(penalty, dtype, scale) -> None:
    # one eligible odd-sized tensor (a partial last row), one eligible 2-D one, one small (eager)
    tensors = [*_tensors(dtype), torch.randn(10, 3).to(dtype)]
    value_eager, grads_eager = _loss_mode(penalty, tensors, False, scale)
    value_fused, grads_fused = _loss_mode(penalty, tensors, True, scale)
    exact = sum(penalty.value(t.to(torch.float64)) for t in tensors)
    assert value_fused.dtype == value_eager.dtype
    torch.testing.assert_close(value_fused.double(), exact, rtol=1e-6, atol=0)
    tol = {"rtol": 2e-2, "atol": 3e-2} if dtype == torch.bfloat16 else {"rtol": 1e-6, "atol": 1e-7}
    for a, b in zip(grads_eager, grads_fused, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_fused_loss_mode_with_only_small_tensors_takes_the_eager_path() -> None:
    tensors = [torch.randn(10, 3), torch.randn(7)]
    value_eager, grads_eager = _loss_mode(rt.ElasticNet(l1=0.1, l2=0.2), tensors, False, 1.0)
    value_fused, grads_fused = _loss_mode(rt.ElasticNet(l1=0.1, l2=0.2), tensors, True, 1.0)
    torch.testing.assert_close(value_fused, value_eager)
    for a, b in zip(grads_eager, grads_fused, strict=True):
        torch.testing.assert_close(a, b)


def test_fused_loss_mode_value_accurate_at_float32() -> None:
    w = torch.randn(3 * N, generator=torch.Generator().manual_seed(1)) + 0.5
    exact = 0.3 * w.double().abs().sum() + 0.2 * w.double().square().sum()
    got = rt.ElasticNet(l1=0.3, l2=0.2).value([nn.Parameter(w)], fused=True)
    assert abs(got.item() - exact.item()) / exact.item() < 1e-6


def test_fused_loss_mode_retain_graph_and_accumulation() -> None:
    penalty = rt.ElasticNet(l1=0.1, l2=0.3)
    p = nn.Parameter(torch.randn(N))
    expected = penalty.grad([p])[0]
    value = penalty.value([p], fused=True)
    value.backward(retain_graph=True)
    value.backward()  # the second backward recomputes: the first gradient was handed over
    torch.testing.assert_close(p.grad, 2 * expected)
    for _ in range(2):  # .grad accumulates
        penalty.value([p], fused=True).backward()
    torch.testing.assert_close(p.grad, 4 * expected)


def test_fused_loss_mode_never_overwrites_a_gradient_someone_holds() -> None:
    penalty = rt.L1(1.0)
    p = nn.Parameter(torch.randn(N))
    (first,) = torch.autograd.grad(penalty.value([p], fused=True), [p])
    kept = first.clone()
    with torch.no_grad():
        p.neg_()
    (second,) = torch.autograd.grad(penalty.value([p], fused=True), [p])
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # the caller's tensor is untouched
    torch.testing.assert_close(second, -kept, rtol=0, atol=0)


def test_fused_loss_mode_detects_in_place_changes() -> None:
    p = nn.Parameter(torch.randn(N))
    value = rt.L2(1.0).value([p], fused=True)
    with torch.no_grad():
        p.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        value.backward()


def test_fused_kernels_keep_zeros_and_propagate_nan_like_eager() -> None:
    w = torch.randn(N)
    w[::5] = 0.0
    w[3] = float("nan")
    eager, fused = w.clone(), w.clone()
    rt.ElasticNet(l1=0.3, l2=0.1).prox([eager], 0.5, fused=False)
    rt.ElasticNet(l1=0.3, l2=0.1).prox([fused], 0.5, fused=True)
    torch.testing.assert_close(eager, fused, rtol=0, atol=0, equal_nan=True)
    grads = [torch.zeros_like(w) for _ in range(2)]
    rt.L1(0.3).add_grad_([w], grads[:1], fused=False)
    rt.L1(0.3).add_grad_([w], grads[1:], fused=True)
    assert torch.all(grads[1][::5] == 0)  # sign(0) = 0
    keep = torch.ones(N, dtype=torch.bool)
    keep[3] = False
    torch.testing.assert_close(grads[0][keep], grads[1][keep], rtol=0, atol=0)


def test_value_grad_rows_divide_the_tensor_when_they_can() -> None:
    for numel in (1581 * 1581, 3535 * 3535, 1000 * 1000, 1 << 20):
        row = en._row_length(numel)
        assert numel % row == 0 and en.ROW // 2 <= row <= 2 * en.ROW
    assert en._row_length(N) == en.ROW  # no divisor near ROW: a partial last row (tested above)
