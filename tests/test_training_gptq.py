"""GPTQ weight rounding (``lunglens.training.gptq.gptq_round``): the layer-output error it is
for, on the grid and within the range the quantizer gave.

Pure numpy: the rounding of one layer, with inputs whose correlation is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from lunglens.training.gptq import _accumulate, _Layer, _row_errors, gptq_round


def _output_error(w: np.ndarray, q: np.ndarray, scale: np.ndarray, x: np.ndarray) -> float:
    """``||W X - Q X||^2`` over the rows of ``x`` ``[M, D]``."""
    return float((((w - q * scale[:, None]) @ x.T) ** 2).sum())


def _correlated(
    rng: np.random.Generator, m: int, d: int, mixing: np.ndarray | None = None
) -> np.ndarray:
    """``[m, d]`` inputs with strongly correlated columns (4 latent factors mixed by
    ``mixing`` ``[4, d]``, drawn if not given), as the channels of a convolution's input are."""
    mixing = rng.normal(size=(4, d)) if mixing is None else mixing
    return rng.normal(size=(m, 4)) @ mixing + 0.1 * rng.normal(size=(m, d))


def test_with_uncorrelated_inputs_gptq_is_rounding_to_nearest() -> None:
    """An identity Hessian spreads no error to other columns: the result must be plain
    rounding, clipped to the range."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 20))
    scale = np.abs(w).max(axis=1) / 64
    q = gptq_round(w, np.eye(20), scale, 64)
    np.testing.assert_array_equal(q, np.clip(np.round(w / scale[:, None]), -64, 64))


def test_gptq_lowers_the_output_error_of_correlated_inputs_and_stays_in_range() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 48))
    mixing = rng.normal(size=(4, 48))
    x = _correlated(rng, 2000, 48, mixing)
    scale = np.abs(w).max(axis=1) / 8  # a coarse grid (4 bits) so that rounding matters
    q = gptq_round(w, x.T @ x, scale, 8)
    nearest = np.clip(np.round(w / scale[:, None]), -8, 8)
    assert q.dtype == np.int8 and np.abs(q).max() <= 8
    assert _output_error(w, q, scale, x) < 0.5 * _output_error(w, nearest, scale, x)
    # measured on new inputs from the same distribution too, not only the ones it fitted
    x_new = _correlated(rng, 2000, 48, mixing)
    assert _output_error(w, q, scale, x_new) < _output_error(w, nearest, scale, x_new)


def test_one_hessian_per_row_as_in_a_depthwise_conv() -> None:
    """Each row (a depthwise channel) with its own inputs: no row's error may exceed plain
    rounding's (a row GPTQ makes worse keeps the nearest rounding), the total must drop, and a
    row is rounded the same whatever the other rows are."""
    rng = np.random.default_rng(2)
    rows, d = 5, 9
    w = rng.normal(size=(rows, d))
    xs = [_correlated(rng, 500, d) for _ in range(rows)]
    h = np.stack([x.T @ x for x in xs])
    scale = np.abs(w).max(axis=1) / 4
    q = gptq_round(w, h, scale, 4)
    nearest = np.clip(np.round(w / scale[:, None]), -4, 4)
    for r in range(rows):
        one = slice(r, r + 1)
        assert _output_error(w[one], q[one], scale[one], xs[r]) <= _output_error(
            w[one], nearest[one], scale[one], xs[r]
        )
    np.testing.assert_array_equal(gptq_round(w[:2], h[:2], scale[:2], 4), q[:2])
    assert sum(
        _output_error(w[r : r + 1], q[r : r + 1], scale[r : r + 1], xs[r]) for r in range(rows)
    ) < 0.8 * sum(
        _output_error(w[r : r + 1], nearest[r : r + 1], scale[r : r + 1], xs[r])
        for r in range(rows)
    )


def test_an_input_that_is_always_zero_gets_weight_zero() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 10))
    x = _correlated(rng, 300, 10)
    x[:, 3] = 0.0
    scale = np.abs(w).max(axis=1) / 64
    q = gptq_round(w, x.T @ x, scale, 64)
    assert np.all(q[:, 3] == 0)


def test_a_row_gptq_would_make_worse_keeps_the_nearest_rounding() -> None:
    """On a 2-step grid GPTQ's greedy pass, clipped at the range, leaves row 1 of this draw
    with a larger output error than plain rounding (41.4 vs 28.9): that row must come back
    rounded to nearest, and the others from GPTQ, better than nearest."""
    rng = np.random.default_rng(1)
    d = 9
    w = rng.normal(size=(4, d))
    mixing = rng.normal(size=(4, d))
    h = np.stack([x.T @ x for x in (_correlated(rng, 200, d, mixing) for _ in range(4))])
    scale = np.abs(w).max(axis=1) / 2
    q = gptq_round(w, h, scale, 2)
    nearest = np.clip(np.round(w / scale[:, None]), -2, 2)
    np.testing.assert_array_equal(q[1], nearest[1])
    got, near = _row_errors(w, q.astype(float), scale, h), _row_errors(w, nearest, scale, h)
    assert np.all(got <= near) and np.all(got[[0, 2, 3]] < near[[0, 2, 3]])


@pytest.mark.parametrize(
    ("channels", "out", "kernel", "strides", "pads", "group"),
    [
        (6, 4, (1, 1), (1, 1), (0, 0, 0, 0), 1),  # pointwise
        (4, 5, (3, 2), (2, 1), (1, 0, 2, 1), 1),  # kh != kw, strided, uneven pads
        (6, 4, (3, 3), (2, 2), (1, 1, 1, 1), 2),  # grouped
        (5, 5, (5, 5), (1, 2), (2, 1, 2, 2), 5),  # depthwise
    ],
)
def test_hessians_are_those_of_the_convolution_they_stand_for(
    channels: int, out: int, kernel, strides, pads, group: int
) -> None:
    """``w H w^T`` must equal the squared output of the very convolution (ONNX weight layout
    ``[O, C/group, kh, kw]``, pads top/left/bottom/right), so that GPTQ's columns are the
    Conv's inputs: checked against torch's conv2d for every kind of Conv the models have."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, channels, 11, 9)).astype(np.float32)
    w = rng.normal(size=(out, channels // group, *kernel))
    h = _accumulate(_Layer("x", kernel, strides, pads, group), x)
    t, left, b, r = pads
    y = torch.nn.functional.conv2d(
        torch.nn.functional.pad(torch.from_numpy(x).double(), (left, r, t, b)),
        torch.from_numpy(w),
        stride=strides,
        groups=group,
    ).numpy()  # [N, O, Ho, Wo]
    rows = w.reshape(out, -1)
    if h.ndim == 3:
        h = np.repeat(h, out // group, axis=0)
        energy = np.einsum("od,ode,oe->o", rows, h, rows)
    else:
        energy = np.einsum("od,de,oe->o", rows, h, rows)
    np.testing.assert_allclose(energy, (y**2).sum(axis=(0, 2, 3)), rtol=1e-5)
