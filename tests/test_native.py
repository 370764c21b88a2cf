"""The C kernels for small CPU tensors: the same numbers as ATen's, and a quiet fallback without them."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regtorch as rt
from regtorch import _native
from regtorch.training._mlp_step import mlp_grads_, mlp_layers

pytestmark = pytest.mark.skipif(not _native.available(), reason="no C compiler on this machine")

DTYPES = [torch.float32, torch.float64]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


def _tensors(dtype: torch.dtype, sizes=(7, 64, 1000, 33), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.2 * torch.randn(n, generator=g, dtype=dtype) for n in sizes]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality, with -0 counted as +0 (ATen's own loops disagree on the sign of a zero)."""
    return torch.equal((a + 0.0).view(INT_VIEW[a.dtype]), (b + 0.0).view(INT_VIEW[b.dtype]))


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A process state as before the first use, with an empty cache folder; restored afterwards."""
    monkeypatch.setenv("REGTORCH_CACHE_DIR", str(tmp_path / "cache"))
    _native._kernels.cache_clear()
    monkeypatch.setattr(_native, "_arrays_of", {})
    yield tmp_path / "cache"
    _native._kernels.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau, c", [(0.1, 1.0), (0.1, 1.3), (0.0, 1.3), (0.5, 1.0)])
def test_prox_equals_softshrink_then_divide_bit_for_bit(dtype, tau, c):
    tensors = _tensors(dtype)
    tensors[0][:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
    expected = [F.softshrink(t, tau).div_(c) if tau else t / c for t in tensors]
    _native.prox_(tensors, tau, c)
    for found, want in zip(tensors, expected, strict=True):
        assert torch.equal(found.isnan(), want.isnan())
        assert _same_bits(found.nan_to_num(), want.nan_to_num())


def test_prox_bumps_the_version_counter_and_skips_the_identity():
    w = torch.randn(10)
    before = w._version
    _native.prox_([w], 0.1, 1.0)
    assert w._version > before
    kept = w.clone()
    _native.prox_([w], 0.0, 1.0)
    assert torch.equal(w, kept)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [True, False])
def test_add_grad_equals_sign_and_scaled_weight(dtype, accumulate):
    tensors = _tensors(dtype)
    tensors[1][:3] = torch.tensor([0.0, -0.0, float("nan")], dtype=dtype)
    grads = _tensors(dtype, seed=1)
    a1, a2 = 0.01, 0.004
    base = [g.clone() if accumulate else torch.zeros_like(g) for g in grads]
    expected = [b + (a1 * w.sign() + a2 * w) for w, b in zip(tensors, base, strict=True)]
    _native.add_grad_(tensors, grads, a1, a2, accumulate=accumulate)
    for found, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(found, want, rtol=0, atol=4 * torch.finfo(dtype).eps, equal_nan=True)
    assert torch.equal(grads[1][:2], base[1][:2])  # sign(±0) = 0: nothing added


@pytest.mark.parametrize("dtype", DTYPES)
def test_value_sums_match_a_float64_reference_and_write_the_gradients(dtype):
    tensors = _tensors(dtype, sizes=(5, 60_000, 8, 1))
    outs = [torch.full_like(t, 7.0) for t in tensors]
    abs_sum, square_sum = _native.value_grad(tensors, 0.3, 0.2, outs)
    wide = torch.cat([t.double() for t in tensors])
    assert abs_sum == pytest.approx(wide.abs().sum().item(), rel=1e-12)
    assert square_sum == pytest.approx(wide.square().sum().item(), rel=1e-12)
    for w, g in zip(tensors, outs, strict=True):
        torch.testing.assert_close(g, 0.3 * w.sign() + 0.2 * w)
    assert _native.value_grad(tensors) == (abs_sum, square_sum)  # without outputs: the same sums


def test_takes_only_contiguous_small_plain_cpu_float_tensors_of_one_dtype(fresh_build, monkeypatch):
    small = torch.randn(4, 5)
    assert _native.takes([small, torch.randn(3)])
    assert not _native.takes([])
    assert not _native.takes([small.t()])  # not contiguous
    assert not _native.takes([small, small.double()])  # two dtypes
    assert not _native.takes([small.bfloat16()])
    assert not _native.takes([torch.randn(_native.NATIVE_MAX_TENSOR)])  # ATen's threads win
    assert _native.takes([torch.randn(_native.NATIVE_MAX_TENSOR - 1)])
    assert _native.takes([nn.Parameter(small)])

    class Tagged(torch.Tensor):
        pass

    assert not _native.takes([small.as_subclass(Tagged)])  # a subclass may not own its data_ptr
    monkeypatch.setenv("REGTORCH_NATIVE", "0")  # read at first use
    _native._kernels.cache_clear()
    assert not _native.available()
    assert not _native.takes([small])


def test_build_is_cached_on_disk_and_reused(fresh_build):
    assert _native.available()
    built = list(fresh_build.glob("kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    _native._kernels.cache_clear()
    assert _native.available()
    assert built[0].stat().st_mtime_ns == stamp
    assert list(fresh_build.iterdir()) == built  # no temporary files left behind


def test_no_compiler_means_unavailable_without_a_warning(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-regtorch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _native.available()
        assert not _native.takes([torch.randn(3)])


def test_a_failing_compiler_warns_once_and_falls_back_to_aten(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")  # found, but every build fails
    w = [torch.randn(5, 4)]
    expected = [F.softshrink(w[0], 0.1)]
    with pytest.warns(RuntimeWarning, match="could not build its C kernels") as caught:
        assert not _native.available()
        assert not _native.available()
        rt.L1(0.1).prox(w, 1.0)
    assert len([x for x in caught if issubclass(x.category, RuntimeWarning)]) == 1
    torch.testing.assert_close(w[0], expected[0], rtol=0, atol=0)
    assert not list(fresh_build.glob("*"))  # nothing half-written


PENALTIES = [rt.L1(0.01), rt.L2(0.02), rt.ElasticNet(l1=0.01, l2=0.03), rt.L1(0.01) + rt.L2(0.005)]


@pytest.mark.parametrize("penalty", PENALTIES, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES)
def test_penalty_paths_equal_the_aten_paths(penalty, dtype):
    tensors = _tensors(dtype)
    reference = [t.clone() for t in tensors]
    penalty.prox(tensors, 0.5)  # native
    penalty.prox(reference, 0.5, foreach=False)  # ATen, per tensor
    for found, want in zip(tensors, reference, strict=True):
        assert _same_bits(found, want)

    grads, ref_grads = _tensors(dtype, seed=3), _tensors(dtype, seed=3)
    penalty.add_grad_(tensors, grads, alpha=0.7)
    penalty.add_grad_(tensors, ref_grads, alpha=0.7, foreach=False)
    for found, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(found, want)

    plan = penalty.prox_plan()
    wide = torch.cat([t.double() for t in tensors])
    closed_form = plan.l1 * wide.abs().sum() + plan.l2 * wide.square().sum()
    with torch.no_grad():
        value = penalty.value(tensors)
    assert value.dtype == dtype
    torch.testing.assert_close(
        value.double(), closed_form, rtol=1e-7 if dtype == torch.float32 else 1e-13, atol=0
    )


@pytest.mark.parametrize("penalty", PENALTIES, ids=repr)
def test_penalty_value_gradient_equals_autograd_and_survives_a_second_backward(penalty):
    params = [t.requires_grad_() for t in _tensors(torch.float64)]
    value = penalty.value(params)
    reference = penalty.value(params, fused=False)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=0)
    (2.0 * value).backward(retain_graph=True)
    first = [p.grad.clone() for p in params]
    expected = torch.autograd.grad(2.0 * reference, params)
    for found, want in zip(first, expected, strict=True):
        torch.testing.assert_close(found, want, rtol=1e-12, atol=1e-15)
    for p in params:
        p.grad = None
    (2.0 * value).backward()
    for p, want in zip(params, first, strict=True):
        assert torch.equal(p.grad, want)


def test_penalty_value_gradient_passes_gradcheck():
    params = [t.requires_grad_() for t in _tensors(torch.float64, sizes=(6, 5))]
    with torch.no_grad():
        for p in params:  # away from the kink at 0, where finite differences are meaningless
            p.add_(p.sign() * 0.1)
    assert torch.autograd.gradcheck(lambda *ws: rt.ElasticNet(l1=0.1, l2=0.3).value(list(ws)), params)


def test_mlp_step_with_native_terms_equals_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    reg = rt.Regularizer(model, rt.ElasticNet(l1=1e-2, l2=3e-3), mode="loss")
    (F.cross_entropy(model(x), y) + reg.penalty()).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    terms = reg.grad_coefficients()
    assert _native.takes(list(terms))
    mlp_grads_(*mlp_layers(model), x, y, terms)
    for p, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_increment_adds_one_like_foreach_add(dtype):
    counters = [torch.tensor(v, dtype=dtype) for v in (0.0, 7.0, 16777216.0, -1.5)] + [
        torch.randn(3, 5, dtype=dtype)
    ]
    expected = [c + 1 for c in counters]
    versions = [c._version for c in counters]
    _native.increment_(counters)
    assert all(torch.equal(c, e) for c, e in zip(counters, expected, strict=True))  # 2**24 + 1 rounds in f32
    assert all(c._version > v for c, v in zip(counters, versions, strict=True))
