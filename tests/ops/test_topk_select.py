"""relground.ops.topk_select against torch.topk with -inf masking and a float64 Python loop."""
from __future__ import annotations

import math

import pytest
import torch

import relground
from relground.ops import topk_select
from tests.ops._hypothesis import given, settings, st  # skips only the property tests without it
from tests.ops.op_tester import OpTester, SampleInput, assert_outputs_close
from tests.utils import cpu_and_cuda

needs_ops = pytest.mark.skipif(not relground.HAS_OPS, reason="native extension relground._C not built")
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def topk_select_loop(scores, k, valid=None):
    """float64 Python loop: valid entries ordered by (NaN first, larger value, lower index), padded with -1/-inf."""
    values, indices = [], []
    for r, row in enumerate(scores.double().cpu().tolist()):
        keep = [j for j in range(len(row)) if valid is None or bool(valid[r, j])]
        keep.sort(key=lambda j: (not math.isnan(row[j]), -row[j] if not math.isnan(row[j]) else 0.0, j))
        keep = keep[:k] + [-1] * max(0, k - len(keep))
        indices.append(keep)
        values.append([row[j] if j >= 0 else -math.inf for j in keep])
    shape = (scores.shape[0], k)
    return torch.tensor(values, dtype=torch.float64).reshape(shape), torch.tensor(indices, dtype=torch.long).reshape(shape)


def random_scores(rows, cols, dtype=torch.float32, device="cpu", seed=0, contiguous=True, levels=None):
    """Scores [rows, cols]; ``levels`` draws integers in [0, levels) to force ties."""
    g = torch.Generator().manual_seed(seed)
    if levels is None:
        scores = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    else:
        scores = torch.randint(0, levels, (rows, cols), generator=g).double()
    scores = scores.to(dtype=dtype, device=device)
    if not contiguous:
        scores = scores.t().contiguous().t()  # column-major, same values
        assert not scores.is_contiguous() or min(rows, cols) <= 1
    return scores


def random_valid(rows, cols, device="cpu", seed=0, min_valid=0):
    """Padded-row mask: row r has its first n_r entries valid (n_r random in [min_valid, cols])."""
    g = torch.Generator().manual_seed(seed + 7)
    counts = torch.randint(min_valid, cols + 1, (rows, 1), generator=g)
    return (torch.arange(cols)[None, :] < counts).to(device)


class TestTopkSelect(OpTester):
    dtypes = ALL_DTYPES
    op = torch.ops.relground.topk_select.default if relground.HAS_OPS else None

    def fn(self, scores, k, valid=None):
        return topk_select(scores, k, valid)

    def reference_fn(self, scores, k, valid=None):
        return topk_select_loop(scores, k, valid)

    def sample_inputs(self, device, dtype):
        for seed in (0, 1):
            yield SampleInput((random_scores(6, 10, dtype, device, seed), 4, random_valid(6, 10, device, seed)),
                              name=f"padded-{seed}")
        yield SampleInput((random_scores(5, 8, dtype, device, 2, contiguous=False), 3,
                           random_valid(5, 8, device, 2).t().contiguous().t()), name="non-contiguous")
        yield SampleInput((random_scores(4, 9, dtype, device, 3, levels=3), 9), name="ties, k=M, no mask")
        yield SampleInput((random_scores(3, 1, dtype, device, 4), 1, torch.tensor([[True], [False], [True]],
                                                                                   device=device)), name="M=1")
        yield SampleInput((random_scores(0, 5, dtype, device, 5), 2), name="R=0")
        yield SampleInput((random_scores(3, 0, dtype, device, 6), 0), name="M=0")
        yield SampleInput((random_scores(3, 4, dtype, device, 7), 0), name="k=0")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_matches_torch_topk_with_masking(device, dtype, seed):
    scores = random_scores(8, 12, dtype, device, seed)
    valid = random_valid(8, 12, device, seed, min_valid=0)
    k = 5
    values, indices = topk_select(scores, k, valid)
    expected_values, expected_indices = torch.topk(scores.masked_fill(~valid, -math.inf), k, dim=1)
    torch.testing.assert_close(values, expected_values, atol=0, rtol=0)
    real = indices >= 0  # padding slots: torch.topk returns some invalid index there, the op returns -1
    assert torch.equal(indices[real], expected_indices[real])
    assert torch.equal(real, torch.gather(valid, 1, expected_indices) & (expected_values > -math.inf))
    assert (~real).any() and real.any()  # the seeds give rows both shorter and longer than k


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_fewer_valid_than_k_and_ties(device):
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.5, 0.5, 0.5, 0.5, 0.5]], device=device)
    valid = torch.tensor([[True, True, False, True, True], [False, True, False, False, False]], device=device)
    values, indices = topk_select(scores, 4, valid)
    assert indices.tolist() == [[1, 4, 3, 0], [1, -1, -1, -1]]  # tie 3.0 at 1 and 4 (2 is invalid): lower first
    assert values.tolist() == [[3.0, 3.0, 2.0, 1.0], [0.5, -math.inf, -math.inf, -math.inf]]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nan_ranks_first_and_valid_minus_inf_beats_padding(device):
    scores = torch.tensor([[0.0, math.nan, 5.0, -math.inf, math.nan]], device=device)
    valid = torch.tensor([[False, True, True, True, True]], device=device)
    values, indices = topk_select(scores, 4, valid)
    assert indices.tolist() == [[1, 4, 2, 3]]
    assert values[0, :2].isnan().all() and values[0, 2] == 5 and values[0, 3] == -math.inf
    values, indices = topk_select(scores, 5, valid)
    assert indices[0, 3:].tolist() == [3, -1]  # valid -inf entry kept, the invalid entry 0 never returned


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_autocast_output_is_float32(device):
    scores = random_scores(4, 6, device=device)
    amp_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=amp_dtype):
        values, indices = topk_select(scores.to(amp_dtype), 3)
    assert values.dtype == torch.float32 and indices.dtype == torch.long
    assert_outputs_close((values, indices), topk_select_loop(scores.to(amp_dtype), 3))


@needs_ops
def test_torch_compile_fullgraph():
    scores, valid = random_scores(4, 6), random_valid(4, 6)
    compiled = torch.compile(topk_select, fullgraph=True, backend="aot_eager")
    for actual, expected in zip(compiled(scores, 3, valid), topk_select(scores, 3, valid)):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_no_gradient_flows():
    values, _ = topk_select(random_scores(2, 4).requires_grad_(), 2)
    assert not values.requires_grad


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(0, 4), cols=st.integers(0, 7), data=st.data(), seed=st.integers(0, 2**31 - 1),
       levels=st.sampled_from((None, 2)))
def test_property_sorted_unique_and_matches_loop(rows, cols, data, seed, levels):
    k = data.draw(st.integers(0, cols))
    scores = random_scores(rows, cols, seed=seed, levels=levels)
    valid = random_valid(rows, cols, seed=seed) if cols else torch.zeros(rows, 0, dtype=torch.bool)
    values, indices = topk_select(scores, k, valid)
    assert values.shape == indices.shape == (rows, k)
    assert (values[:, :-1] >= values[:, 1:]).all()  # descending
    for r in range(rows):
        real = [j for j in indices[r].tolist() if j >= 0]
        assert len(set(real)) == len(real) and all(valid[r, j] for j in real)
        assert len(real) == min(k, int(valid[r].sum()))
    assert_outputs_close((values, indices), topk_select_loop(scores, k, valid))


@needs_ops
@pytest.mark.parametrize(
    "scores, k, valid, match",
    [
        (torch.rand(3), 1, None, "`scores` must have 2 dimensions"),
        (torch.rand(2, 4), 5, None, r"`k` \(5\) must be <= the number of columns"),
        (torch.rand(2, 4), -1, None, "`k` must be >= 0"),
        (torch.randint(0, 9, (2, 4)), 1, None, "`scores` must be a floating"),
        (torch.rand(2, 4), 1, torch.ones(2, 4), "`valid` must be a bool tensor"),
        (torch.rand(2, 4), 1, torch.ones(2, 3, dtype=torch.bool), "`valid` must have the shape of `scores`"),
    ],
)
def test_bad_input_errors(scores, k, valid, match):
    with pytest.raises(RuntimeError, match=match):
        topk_select(scores, k, valid)


@needs_ops
@pytest.mark.needs_cuda
def test_device_mismatch_error():
    with pytest.raises(RuntimeError, match="`valid` is on"):
        topk_select(torch.rand(2, 4, device="cuda"), 1, torch.ones(2, 4, dtype=torch.bool))
