"""Exact integer matrix products, the same integers on every device.

``int_matmul(a, b)`` is ``a @ b`` on integer tensors with an int64 result. Callers declare
the operands' signed widths, which bound every partial sum:

    |sum_k a_ik b_kj| <= K * max|a| * max|b| <= K * 2^(a_bits-1) * 2^(b_bits-1) = bound

A *route* is one way of computing the product; each is exact under its own condition on
``bound`` (checked from the declared widths before it is chosen, never from the data):

| route     | computes                                      | exact when             | where       |
|-----------|-----------------------------------------------|------------------------|-------------|
| `int8`    | ``torch._int_mm`` (int8 x int8 -> int32)      | operands int8, bound < 2^31, ``b`` shared (2-D) | CPU, CUDA |
| `int32`   | ``torch.matmul`` on int32 (int32 accumulator) | bound < 2^31           | CPU         |
| `int64`   | ``torch.matmul`` on int64                     | bound < 2^63           | CPU         |
| `float32` | float32 matmul, TF32 and reduced precision off | bound < 2^24          | CPU, CUDA   |
| `float64` | float64 matmul                                | bound < 2^53           | CPU, CUDA   |

Float routes are exact because every product and every partial sum is an integer below
the format's ``2^(mantissa+1)``, in whatever order the library sums; TF32 (10-bit
mantissa) would break that, so they run at "highest" float32 matmul precision.

``int8`` details: the left operand's leading dimensions are flattened into rows (one call
for a batch of tokens), and the operands are zero-padded to the kernel's shape rules
(CUDA: more than 16 rows, ``K`` and ``N`` multiples of 8; CPU: ``N`` a multiple of 8,
which it runs much faster); zero rows and columns add nothing and are cut off after. An
unsigned 8-bit left operand (softmax probabilities, ``0..255``) enters as ``a - 128``
and the product gets ``128 * sum_k b_kn`` back per column.

The automatic choice (:func:`choose_route`, order in :func:`auto_routes`): ``int8`` where
it applies and the device runs it fast; otherwise on CPU the integer matmul of the
narrowest accumulator that holds ``bound`` (``int32`` runs a batch of attention heads in
one ``bmm``, where ``_int_mm`` takes one 2-D product a call); on CUDA, which has no
integer ``bmm``/``matmul``, ``float32`` or ``float64``. On a CPU without int8
dot-product instructions (AVX-512 VNNI or AMX) oneDNN's ``_int_mm`` is a slow generic
loop, so ``int8`` is not chosen there (the measurements behind this choice:
``benchmarks/README.md``, "Integer matmul routes"). A product no route can do exactly is
an error, never a wrapped result. :func:`forced_route` forces one route (tests,
benchmarks).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .width import declare, signed_bits


def accumulator_bits(a_bits: int, b_bits: int, depth: int) -> int:
    """Signed width of a sum of ``depth`` products of ``a_bits`` x ``b_bits`` integers."""
    return signed_bits(depth << (a_bits + b_bits - 2))


def product_bound(a_bits: int, b_bits: int, depth: int) -> int:
    """``K * 2^(a_bits-1) * 2^(b_bits-1)``: no partial sum of the product exceeds it."""
    return depth << (a_bits + b_bits - 2)


# ----------------------------------------------------------------------------- routes

def _pad(t: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """Zero rows appended to a 2-D tensor up to a multiple of ``multiple`` (at least
    ``minimum``)."""
    rows = t.shape[0]
    target = max(minimum, -(-rows // multiple) * multiple)
    return t if target == rows else F.pad(t, (0, 0, 0, target - rows))


def _int8(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
    """``_int_mm`` of ``a`` (rows, K) and ``b`` (K, N), the latter passed column-major
    (as a transposed (N, K) tensor: the layout a linear layer's weight has)."""
    rows, columns = a.shape[:-1], b.shape[-1]
    a8 = (a - 128 if a_unsigned else a).reshape(-1, a.shape[-1]).to(torch.int8)
    count = a8.shape[0]
    bt = b.mT.to(torch.int8)
    if a.is_cuda:
        a8 = _pad(_pad(a8.mT, 8).mT, 1, minimum=17)
        bt = _pad(bt.mT, 8).mT
    elif a8.shape[-1] == 1:  # oneDNN misreads a one-deep (1, N) operand of stride (1, 1)
        a8, bt = F.pad(a8, (0, 1)), F.pad(bt, (0, 1))
    bt = _pad(bt, 8)
    out = torch._int_mm(a8.contiguous(), bt.contiguous().mT)[:count, :columns]
    out = out.to(torch.int64).reshape(*rows, columns)
    if a_unsigned:
        out = out + 128 * b.to(torch.int64).sum(dim=-2, keepdim=True)
    return out


def _int32(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
    return torch.matmul(a.to(torch.int32), b.to(torch.int32)).to(torch.int64)


def _int64(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
    return torch.matmul(a.to(torch.int64), b.to(torch.int64))


@contextlib.contextmanager
def _highest_precision() -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _float(dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    def route(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
        with _highest_precision():
            return torch.matmul(a.to(dtype), b.to(dtype)).to(torch.int64)
    return route


class Route:
    """One way of computing the product: the function, the largest ``bound`` it is exact
    for (exclusive), and the device types it runs on."""

    def __init__(self, fn: Callable[..., torch.Tensor], limit_bits: int,
                 devices: tuple[str, ...]) -> None:
        self.fn, self.limit, self.devices = fn, 1 << limit_bits, devices


ROUTES: dict[str, Route] = {
    "int8": Route(_int8, 31, ("cpu", "cuda")),
    "int32": Route(_int32, 31, ("cpu",)),
    "int64": Route(_int64, 63, ("cpu",)),
    "float32": Route(_float(torch.float32), 24, ("cpu", "cuda")),
    "float64": Route(_float(torch.float64), 53, ("cpu", "cuda")),
}


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has the int8 dot-product instructions (AVX-512 VNNI, AMX) that
    oneDNN's ``_int_mm`` kernels are fast with."""
    return torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()


def auto_routes(device_type: str) -> tuple[str, ...]:
    """The routes :func:`choose_route` tries on a device type, fastest first."""
    if device_type == "cpu":
        return ("int8", "int32", "int64") if cpu_has_int8_dot() else ("int32", "int64")
    return ("int8", "float32", "float64")

_forced: list[str] = []


@contextlib.contextmanager
def forced_route(name: str) -> Iterator[None]:
    """Every :func:`int_matmul` in the block takes route ``name`` (an error where it
    cannot be exact or does not apply)."""
    if name not in ROUTES:
        raise ValueError(f"unknown int_matmul route {name!r}; routes: {', '.join(ROUTES)}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _applies(name: str, a: torch.Tensor, b: torch.Tensor, a_bits: int, b_bits: int,
             a_unsigned: bool) -> str | None:
    """Why route ``name`` cannot compute this product exactly (None: it can)."""
    route = ROUTES[name]
    device = a.device.type
    if device not in route.devices:
        return f"route {name} does not run on {device} (it runs on {', '.join(route.devices)})"
    if product_bound(a_bits, b_bits, a.shape[-1]) >= route.limit:
        return (f"route {name} is exact only for K * max|a| * max|b| < 2^"
                f"{route.limit.bit_length() - 1}, and {a.shape[-1]} x {a_bits}-bit x "
                f"{b_bits}-bit products may reach more")
    if name == "int8":
        if b_bits > 8 or a_bits > (9 if a_unsigned else 8):
            return "route int8 takes operands of at most 8 bits (or unsigned 8-bit a)"
        if b.dim() != 2:
            return "route int8 takes a right operand shared by the batch (2-D)"
    return None


def choose_route(a: torch.Tensor, b: torch.Tensor, a_bits: int, b_bits: int,
                 a_unsigned: bool = False) -> str:
    """The route :func:`int_matmul` takes for these operands (see the module docstring)."""
    if _forced:
        why = _applies(_forced[-1], a, b, a_bits, b_bits, a_unsigned)
        if why:
            raise ValueError(f"forced int_matmul route: {why}")
        return _forced[-1]
    candidates = auto_routes(a.device.type)
    for name in candidates:
        if _applies(name, a, b, a_bits, b_bits, a_unsigned) is None:
            return name
    raise ValueError(f"no exact route for a {a.shape[-1]}-deep product of {a_bits}-bit and "
                     f"{b_bits}-bit integers on {a.device.type} (tried "
                     f"{', '.join(candidates)}); narrow the operands")


def int_matmul(a: torch.Tensor, b: torch.Tensor, a_bits: int = 8, b_bits: int = 8,
               what: str = "matmul", a_unsigned: bool = False) -> torch.Tensor:
    """``a @ b`` for integer tensors of at most ``a_bits``/``b_bits`` signed bits
    (``a_unsigned``: ``a`` holds ``0 .. 2^(a_bits-1) - 1``), int64, exact."""
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        raise TypeError("int_matmul takes integer tensors")
    if a.device != b.device:
        raise ValueError(f"int_matmul operands on different devices: {a.device} and "
                         f"{b.device}")
    declare(a, a_bits, f"{what}.a")
    declare(b, b_bits, f"{what}.b")
    name = choose_route(a, b, a_bits, b_bits, a_unsigned and a_bits == 9)
    out = ROUTES[name].fn(a, b, a_unsigned and a_bits == 9)
    return declare(out, accumulator_bits(a_bits, b_bits, a.shape[-1]), f"{what}.acc")
