"""Every int_matmul route, forced, equals the Python-int reference on random and extreme
inputs; the automatic choice is exact; routes that cannot be exact refuse."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from intvit.arith import int_matmul, matmul
from intvit.arith.matmul import ROUTES, choose_route, cpu_has_int8_dot, forced_route

CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA GPU (run `make gpu-check` on a GPU machine)")


def python_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in Python integers, broadcasting leading dimensions like torch."""
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    ma = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:]).tolist()
    mb = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:]).tolist()
    out = [[[sum(x * y for x, y in zip(row, col)) for col in zip(*right)] for row in left]
           for left, right in zip(ma, mb)]
    return torch.tensor(out, dtype=torch.int64).reshape(*batch, a.shape[-2], b.shape[-1])


def operand(shape, bits, unsigned=False, extreme=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (0, (1 << (bits - 1)) - 1) if unsigned else (-(1 << (bits - 1)),
                                                         (1 << (bits - 1)) - 1)
    if extreme == "low":
        return torch.full(shape, lo, dtype=torch.int64)
    if extreme == "high":
        return torch.full(shape, hi, dtype=torch.int64)
    return torch.randint(lo, hi + 1, shape, generator=gen)


SHAPES = [  # (a shape, b shape, a_bits, b_bits, a_unsigned)
    ((5, 3), (3, 7), 8, 8, False),            # fewer than 17 rows, odd K and N
    ((2, 20, 16), (16, 10), 8, 8, False),      # batched tokens, shared weight
    ((40, 33), (33, 10), 9, 8, True),          # unsigned 8-bit probabilities
    ((2, 3, 9, 8), (2, 3, 8, 9), 8, 8, False),  # attention heads, one b per head
    ((3, 6, 5), (5, 4), 12, 8, False),         # wider than int8
]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("extreme", [None, "low", "high"])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_every_route_equals_the_python_reference(route, extreme, shapes):
    a_shape, b_shape, a_bits, b_bits, unsigned = shapes
    a = operand(a_shape, a_bits, unsigned, extreme)
    b = operand(b_shape, b_bits, extreme=extreme, seed=1)
    expected = python_matmul(a, b)
    try:
        with forced_route(route):
            out = int_matmul(a, b, a_bits, b_bits, a_unsigned=unsigned)
    except ValueError as err:
        assert route == "int8" and ("shared" in str(err) or "at most 8 bits" in str(err))
        return
    assert out.dtype == torch.int64 and torch.equal(out, expected)
    assert torch.equal(int_matmul(a, b, a_bits, b_bits, a_unsigned=unsigned), expected)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 20),
       seed=st.integers(0, 2 ** 16), route=st.sampled_from(list(ROUTES)))
def test_routes_on_random_shapes(m, k, n, seed, route):
    a, b = operand((m, k), 8, seed=seed), operand((k, n), 8, seed=seed + 1)
    with forced_route(route):
        assert torch.equal(int_matmul(a, b), a @ b)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("m,n", [(1, 1), (3, 8), (17, 9)])
def test_one_deep_products(route, m, n):
    """K = 1: oneDNN's ``_int_mm`` on a CPU with AMX read the (1, N) operand of strides
    (1, 1) in the wrong order and gave garbage; every route must give ``a[i] * b[j]``."""
    a, b = operand((m, 1), 8, seed=m), operand((1, n), 8, seed=n)
    with forced_route(route):
        for _ in range(3):
            assert torch.equal(int_matmul(a, b), python_matmul(a, b))


def test_float32_is_refused_where_it_could_round():
    """K * 128 * 128 >= 2^24 from K = 1024: float32 cannot be proven exact there, and
    the 2^24 + 1 that a product of that depth can reach would round."""
    a = torch.full((2, 1025), -128, dtype=torch.int64)
    b = torch.full((1025, 2), -128, dtype=torch.int64)
    with pytest.raises(ValueError, match="2\\^24"), forced_route("float32"):
        int_matmul(a, b)
    assert torch.equal(int_matmul(a, b), a @ b)


def test_float32_route_ignores_tf32_settings():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        a, b = operand((33, 512), 8, extreme="low"), operand((512, 3), 8, seed=3)
        with forced_route("float32"):
            assert torch.equal(int_matmul(a, b), a @ b)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_choice_and_errors():
    a8, w = operand((4, 16), 8), operand((16, 8), 8)
    assert choose_route(a8, w, 8, 8) == ("int8" if cpu_has_int8_dot() else "int32")
    heads = operand((2, 4, 16), 8), operand((2, 16, 4), 8)
    assert choose_route(*heads, 8, 8) == "int32"
    wide = operand((4, 16), 30), operand((16, 8), 8)
    assert choose_route(*wide, 30, 8) == "int64"
    with pytest.raises(ValueError, match="unknown int_matmul route"), forced_route("tf32"):
        pass
    with pytest.raises(ValueError, match="does not run on meta"), forced_route("int32"):
        int_matmul(a8.to("meta"), w.to("meta"))
    with pytest.raises(ValueError, match="different devices"):
        int_matmul(a8, w.to("meta"))
    with pytest.raises(TypeError):
        int_matmul(a8.float(), w)


@pytest.mark.parametrize("int8_dot", [True, False])
def test_cpu_takes_int8_only_where_it_has_int8_dot_products(monkeypatch, int8_dot):
    """Without VNNI/AMX, ``_int_mm`` is oneDNN's slow generic loop: the int32 matmul is
    taken instead; either way the integers are the same."""
    monkeypatch.setattr(matmul, "cpu_has_int8_dot", lambda: int8_dot)
    a, w = operand((4, 16), 8), operand((16, 8), 8)
    assert choose_route(a, w, 8, 8) == ("int8" if int8_dot else "int32")
    assert matmul.auto_routes("cuda") == ("int8", "float32", "float64")
    assert torch.equal(int_matmul(a, w), a @ w)


@CUDA
@pytest.mark.parametrize("route", ["int8", "float32", "float64"])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "x".join(map(str, s[0])))
def test_cuda_routes_equal_cpu(route, shapes):
    a_shape, b_shape, a_bits, b_bits, unsigned = shapes
    a, b = operand(a_shape, a_bits, unsigned), operand(b_shape, b_bits, seed=1)
    expected = int_matmul(a, b, a_bits, b_bits, a_unsigned=unsigned)
    try:
        with forced_route(route):
            out = int_matmul(a.cuda(), b.cuda(), a_bits, b_bits, a_unsigned=unsigned)
    except ValueError:
        assert route == "int8"
        return
    assert torch.equal(out.cpu(), expected)
    assert torch.equal(int_matmul(a.cuda(), b.cuda(), a_bits, b_bits,
                                  a_unsigned=unsigned).cpu(), expected)
