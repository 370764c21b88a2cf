"""The reusable gradient buffers are handed out only while no one else references them."""

from __future__ import annotations

import pytest
import torch

from regtorch._buffers import gradient_buffer


def _fresh_id(key: torch.Tensor) -> int:
    return id(gradient_buffer(key))


def test_a_free_buffer_is_reused() -> None:
    key = torch.zeros(4, 3)
    first = _fresh_id(key)
    assert _fresh_id(key) == first
    buffer = gradient_buffer(key)
    assert buffer.shape == key.shape and buffer.dtype == key.dtype and buffer.is_contiguous()


@pytest.mark.parametrize(
    "hold",
    [
        lambda b: b,
        lambda b: b.view(-1),
        lambda b: b.detach(),
        lambda b: b[1:],
        lambda b: b.numpy(),
        lambda b: b.untyped_storage(),
        lambda b: [b],
    ],
    ids=["alias", "view", "detach", "slice", "numpy", "storage", "list"],
)
def test_a_held_buffer_is_never_handed_out(hold) -> None:
    key = torch.zeros(4, 3)
    buffer = gradient_buffer(key)
    address = buffer.data_ptr()
    held = hold(buffer)
    del buffer
    other = gradient_buffer(key)
    assert other.data_ptr() != address
    del held, other
    assert _fresh_id(key) == _fresh_id(key)  # free again: reused from now on


def test_a_buffer_that_became_a_grad_is_left_alone() -> None:
    p = torch.nn.Parameter(torch.zeros(4, 3))
    p.grad = gradient_buffer(p)
    assert gradient_buffer(p).data_ptr() != p.grad.data_ptr()


def test_a_new_shape_or_dtype_gets_a_new_buffer() -> None:
    key = torch.zeros(4, 3)
    gradient_buffer(key)
    key.resize_(5, 3)
    assert gradient_buffer(key).shape == (5, 3)
    assert gradient_buffer(key.double()).dtype == torch.float64
