"""The C export: generated code compiles warning-free (gcc strict, sanitizers, clang where
installed), its logits equal the int engine's for every family on ViT and Swin and on
full-size DeiT-T, the debug build replays the golden vectors, the body is integer-only,
the memory plan holds and is enforced, and the C helpers equal intvit.arith."""

import ctypes
import mmap
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch
from conftest import SMALL
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import FAMILIES, calibrated, images

from intvit.approx.rows import NUMERATOR_IBERT, NUMERATOR_IVIT, softmax_from_table
from intvit.arith import floor_div, isqrt, quantize, requantize, round_div
from intvit.cli import main
from intvit.engine import ProgramError, export_program
from intvit.engine.c import generate
from intvit.engine.c.build import CEngine, compiler
from intvit.engine.c.debug import SANITIZE, replay_golden, run_harness
from intvit.engine.c.library import kernel_header
from intvit.engine.engines import make_engine
from intvit.engine.golden import write_golden
from intvit.engine.runtime import IntRuntime
from intvit.engine.shapes import trace_shapes
from intvit.models import model_config
from intvit.models.checkpoint import save_checkpoint

TEST_FLAGS = ("-O0", "-DINTVIT_PORTABLE")  # exactness at any level; sanitized, clang: -O2


def host_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split()}
    except OSError:
        return set()


def host_has_avx2() -> bool:
    return "avx2" in host_flags()


VNNI = ("-mavx2", "-mavx512f", "-mavx512bw", "-mavx512vnni")
AMX = (*VNNI, "-mamx-tile", "-mamx-int8")
# kernel -> (flags, the CPU flags it needs, the kernel the 8-bit products then take)
KERNEL_BUILDS = {
    "portable": (("-DINTVIT_PORTABLE",), set(), "portable"),
    "avx2": (("-mavx2", "-fopenmp"), {"avx2"}, "avx2"),
    # compiled for AVX-512 (the compiler may use it anywhere), the AVX2 kernel forced
    "avx2 forced": ((*VNNI, "-fopenmp", "-DINTVIT_NO_VNNI"), {"avx512_vnni", "avx512bw"},
                    "avx2"),
    "vnni": ((*VNNI, "-fopenmp"), {"avx512_vnni", "avx512bw"}, "vnni"),
    "vnni forced": ((*AMX, "-fopenmp", "-DINTVIT_NO_AMX"), {"avx512_vnni", "avx512bw"},
                    "vnni"),
    "amx": ((*AMX, "-fopenmp"), {"amx_int8", "amx_tile", "avx512_vnni", "avx512bw"}, "amx"),
    "avx512": ((*VNNI, "-mavx512dq", "-mavx512vbmi", "-fopenmp"),
               {"avx512_vnni", "avx512bw", "avx512dq", "avx512vbmi"}, "vnni"),
}


def kernel_build(kind: str) -> tuple[str, ...]:
    """The flags of a kernel build; skips where the CPU lacks an instruction it uses."""
    flags, needs, _ = KERNEL_BUILDS[kind]
    missing = needs - host_flags()
    if missing:
        pytest.skip(f"the host CPU lacks {', '.join(sorted(missing))} (the {kind} kernel)")
    return flags


# threads inside one image even for the test models' small nodes (the engine splits only
# products of at least INTVIT_OMP_MIN_MACS multiply-adds, and row nodes, box copies and
# masks of at least INTVIT_OMP_MIN_WORK values)
SPLIT_ALL = ("-DINTVIT_OMP_MIN_MACS=0", "-DINTVIT_OMP_MIN_WORK=0")
# the AVX2 kernels (madd_epi16 products) with OpenMP threads where the compiler has them
AVX2_FLAGS = ("-O0", "-mavx2", "-fopenmp", *SPLIT_ALL)
needs_avx2 = pytest.mark.skipif(not host_has_avx2(), reason="the host has no AVX2")
# threads of one image and of a run of images: 3 are more than a 2-head product's heads
THREADS = (1, 2, 3)
SWIN = dict(arch="swin", img_size=24, patch_size=2, embed_dim=16, depths=(2, 2), heads=(1, 2),
            window_size=5, num_classes=10)
ARCHS = {"vit": (SMALL, 32, 12), "swin": (SWIN, 24, 6)}

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler on this machine")


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("INTVIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def models():
    """(arch, family) -> (model, program, library), built once for the module."""
    out = {}
    for arch, (cfg, _, _) in ARCHS.items():
        for family, quant in FAMILIES.items():
            model = calibrated(model_config("custom", **cfg), quant)
            program = export_program(model)
            out[arch, family] = model, program, generate(program)
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_c_logits_equal_the_int_engine(models, arch, family):
    model, program, library = models[arch, family]
    _, size, n = ARCHS[arch]
    x = images(n, size, seed=3)
    got = CEngine(program, flags=TEST_FLAGS, library=library)(x)
    assert got.dtype == torch.int64
    assert torch.equal(got, make_engine("int", program)(x))
    assert torch.equal(got, model.forward_int(x).value)


@needs_avx2
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_avx2_build_equals_the_int_engine_for_any_threads(models, arch, family):
    model, program, library = models[arch, family]
    _, size, n = ARCHS[arch]
    x = images(n, size, seed=3)
    want = model.forward_int(x).value
    before = torch.get_num_threads()
    for threads in THREADS:
        engine = CEngine(program, threads=threads, flags=AVX2_FLAGS, library=library)
        assert torch.equal(engine(x), want)  # 2 threads: a run of images each
        assert torch.equal(engine(x[:1]), want[:1])  # 2 threads: OpenMP inside the image
        assert torch.get_num_threads() == before  # PyTorch's own threads are left alone


@pytest.mark.parametrize("kind", ["vnni", "avx512", "amx"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_8bit_kernel_builds_equal_the_int_engine_for_any_threads(models, kind, arch, family):
    """The AVX-512 builds (8-bit products, requantize vectors; with DQ and VBMI the softmax
    row and table look-up vectors too) on every family: I-BERT's softmax products pass 32
    bits."""
    flags = kernel_build(kind)
    model, program, library = models[arch, family]
    _, size, n = ARCHS[arch]
    x = images(n, size, seed=3)
    want = model.forward_int(x).value
    for threads in THREADS:
        engine = CEngine(program, threads=threads, flags=("-O1", *flags, *SPLIT_ALL),
                         library=library)
        assert torch.equal(engine(x), want)  # 2 threads: a run of images each
        assert torch.equal(engine(x[:1]), want[:1])  # 2 threads: OpenMP inside the image


@pytest.fixture(scope="module", params=list(KERNEL_BUILDS))
def matmul_kernels(request, tmp_path_factory):
    """The matmul kernels alone: the int16 kernel for (a, b) in int8 x int8, uint8 x int8,
    int16 x int8, the 8-bit kernel for every pair of int8 and uint8, and with its
    requantization fused into one output type of each size; checked to be the kernel that
    the build runs (amx: the OS granted the tiles)."""
    flags = kernel_build(request.param)
    lib = kernel_snippet(tmp_path_factory.mktemp("matmul"),
                         "INTVIT_DEFINE_MATMUL(mm_s8_s8, int8_t, int8_t)\n"
                         "INTVIT_DEFINE_MATMUL(mm_u8_s8, uint8_t, int8_t)\n"
                         "INTVIT_DEFINE_MATMUL(mm_s16_s8, int16_t, int8_t)\n"
                         "INTVIT_DEFINE_MATMUL8(mm8_s8_s8, int8_t, int8_t)\n"
                         "INTVIT_DEFINE_MATMUL8(mm8_u8_s8, uint8_t, int8_t)\n"
                         "INTVIT_DEFINE_MATMUL8(mm8_s8_u8, int8_t, uint8_t)\n"
                         "INTVIT_DEFINE_MATMUL8(mm8_u8_u8, uint8_t, uint8_t)\n"
                         "INTVIT_DEFINE_MATMUL8_RQ(rq8_s8_s8_s8, int8_t, int8_t, int8_t)\n"
                         "INTVIT_DEFINE_MATMUL8_RQ(rq8_u8_s8_u8, uint8_t, int8_t, uint8_t)\n"
                         "INTVIT_DEFINE_MATMUL8_RQ(rq8_s8_u8_s16, int8_t, uint8_t, int16_t)\n"
                         "INTVIT_DEFINE_MATMUL8_RQ(rq8_u8_u8_s32, uint8_t, uint8_t, int32_t)\n"
                         "const char *kernel(void) { return intvit_matmul8_kernel(); }\n",
                         flags)
    lib.kernel.restype = ctypes.c_char_p
    assert lib.kernel().decode() == KERNEL_BUILDS[request.param][2]
    return lib


def kernel_snippet(folder, source: str, flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """``source`` after ``#include "intvit_kernels.h"``, compiled strictly (-Werror
    -pedantic, -O2) into a shared library in ``folder`` and loaded."""
    (folder / "intvit_kernels.h").write_text(kernel_header())
    (folder / "snippet.c").write_text('#include "intvit_kernels.h"\n' + source)
    lib = folder / "snippet.so"
    subprocess.run([compiler(), "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
                    *flags, "-shared", "-fPIC", "-o", str(lib), str(folder / "snippet.c")],
                   check=True)
    return ctypes.CDLL(str(lib))


S8, U8, S16 = (torch.int8, -128, 127), (torch.uint8, 0, 255), (torch.int16, -300, 300)
MATMUL_TYPES = {"mm_s8_s8": (S8, S8), "mm_u8_s8": (U8, S8), "mm_s16_s8": (S16, S8),
                "mm8_s8_s8": (S8, S8), "mm8_u8_s8": (U8, S8), "mm8_s8_u8": (S8, U8),
                "mm8_u8_u8": (U8, U8)}


@pytest.mark.parametrize("fn", MATMUL_TYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (4, 16, 2), (5, 17, 3), (7, 33, 257),
                                   (9, 3, 600), (3, 40, 513), (17, 65, 64), (33, 47, 130),
                                   (300, 70, 1030), (197, 197, 64), (197, 64, 197),
                                   (8, 32, 4), (2, 48, 516), (3, 5, 0)])
@pytest.mark.parametrize("fill", ["min", "max", "opposite", "random"])
def test_matmul_kernel_edges(matmul_kernels, fn, m, n, k, fill):
    """M, N, K not a multiple of any block (register block, panel, tile, K block, M block,
    the VNNI panel's gathered quads and its byte-wise last quad), DeiT's attention shapes,
    an empty reduction (c = bias: the VNNI kernel starts c from the bias in its first block),
    all-minimum and all-maximum operands (the largest shifted sums)."""
    (dtype, lo, hi), (b_dtype, b_lo, b_hi) = MATMUL_TYPES[fn]
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    if fill == "random":
        a = torch.randint(lo, hi + 1, (m, k), generator=g)
        b = torch.randint(b_lo, b_hi + 1, (n, k), generator=g)
    else:
        a = torch.full((m, k), lo if fill == "min" else hi)
        b = torch.full((n, k), b_hi if fill == "max" else b_lo)
    bias = torch.randint(-1000, 1000, (n,), generator=g, dtype=torch.int32)
    c = run_matmul(matmul_kernels, fn, a.to(dtype), b.to(b_dtype), bias, "bt")
    want = a.to(torch.int64) @ b.to(torch.int64).T + bias.to(torch.int64)
    assert torch.equal(c.to(torch.int64), want)


# how b (n x k, as b^T) is stored -> (its storage, sn, sk) for the kernels' b^T[j][k] =
# bt[j * sn + k * sk]
B_LAYOUTS = {
    "bt": lambda b: (b.contiguous(), b.shape[1], 1),             # a weight: N x K rows
    "b": lambda b: (b.T.contiguous(), 1, b.shape[0]),            # B itself: K x N rows
    "b padded": lambda b: (torch.cat([b.T, b.new_zeros(b.shape[1], 5)], 1).contiguous(), 1,
                           b.shape[0] + 5),
    "every other": lambda b: (torch.stack([b, b], 2).reshape(b.shape[0], -1).contiguous(),
                              2 * b.shape[1], 2),
}


def run_matmul(lib, fn: str, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
               layout: str) -> torch.Tensor:
    """c = a b^T (+ bias) by kernel ``fn``, b^T (``b``: N x K) stored as ``layout`` says."""
    m, k = a.shape
    n = b.shape[0]
    a_c = a.contiguous()
    stored, sn, sk = B_LAYOUTS[layout](b)
    c = torch.zeros(m, n, dtype=torch.int32)
    getattr(lib, fn)(m, n, k, ctypes.c_void_p(a_c.data_ptr()), ctypes.c_void_p(stored.data_ptr()),
                     sn, sk, None if bias is None else ctypes.c_void_p(bias.data_ptr()),
                     ctypes.c_void_p(c.data_ptr()))
    return c


@pytest.mark.parametrize("fn", MATMUL_TYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 17, 3), (7, 33, 257), (3, 40, 513),
                                   (197, 64, 197), (8, 32, 4), (2, 48, 6), (3, 5, 0)])
@pytest.mark.parametrize("layout", [name for name in B_LAYOUTS if name != "bt"])
def test_matmul_kernel_reads_b_by_its_strides(matmul_kernels, fn, m, n, k, layout):
    """b read in place by its strides: stored as B itself (the VNNI kernel packs its rows
    by unpacking), as rows of a wider matrix, and by strides of neither kind (copied byte
    by byte), each K, N and partial quad as above."""
    (dtype, lo, hi), (b_dtype, b_lo, b_hi) = MATMUL_TYPES[fn]
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k + 1)
    a = torch.randint(lo, hi + 1, (m, k), generator=g)
    b = torch.randint(b_lo, b_hi + 1, (n, k), generator=g)
    bias = torch.randint(-1000, 1000, (n,), generator=g, dtype=torch.int32)
    c = run_matmul(matmul_kernels, fn, a.to(dtype), b.to(b_dtype), bias, layout)
    assert torch.equal(c.to(torch.int64), a @ b.T + bias.to(torch.int64))


def bytes_before_guard_page(data: torch.Tensor):
    """``data``'s bytes copied to the end of a page followed by a page that cannot be read
    (a read past them is a segfault); returns the mapping, to be kept alive, and the address."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]  # 0: PROT_NONE
    size = -(-data.numel() // mmap.PAGESIZE) * mmap.PAGESIZE
    pages = mmap.mmap(-1, size + mmap.PAGESIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(pages))
    assert libc.mprotect(base + size, mmap.PAGESIZE, 0) == 0, ctypes.get_errno()
    at = base + size - data.numel()
    ctypes.memmove(at, data.data_ptr(), data.numel())
    return pages, at


@pytest.mark.parametrize("fn", [f for f in MATMUL_TYPES if f.startswith("mm8")])
@pytest.mark.parametrize("m,n,k", [(1, 3, 1), (9, 40, 2), (197, 64, 197), (17, 33, 515),
                                   (3, 5, 64)])
def test_matmul8_reads_nothing_past_a(matmul_kernels, fn, m, n, k):
    """a ends where the readable memory ends: the VNNI kernel reads a in place in whole
    quads, and the matrix's last row from a copy where K is not a multiple of 4 (the
    bytes of a last partial quad past a's end are never read); the product stays exact."""
    (dtype, lo, hi), (b_dtype, b_lo, b_hi) = MATMUL_TYPES[fn]
    g = torch.Generator().manual_seed(m + n + k)
    a = torch.randint(lo, hi + 1, (m, k), generator=g)
    b = torch.randint(b_lo, b_hi + 1, (n, k), generator=g)
    pages, a_at = bytes_before_guard_page(a.to(dtype).contiguous())
    b_c = b.to(b_dtype).contiguous()
    c = torch.zeros(m, n, dtype=torch.int32)
    getattr(matmul_kernels, fn)(m, n, k, ctypes.c_void_p(a_at), ctypes.c_void_p(b_c.data_ptr()),
                                k, 1, None, ctypes.c_void_p(c.data_ptr()))
    assert torch.equal(c.to(torch.int64), a @ b.T)
    del pages
    # b stored as B (K x N rows, packed by masked loads) ends where readable memory ends
    pages, b_at = bytes_before_guard_page(b.T.to(b_dtype).contiguous())
    a_c = a.to(dtype).contiguous()
    c.zero_()
    getattr(matmul_kernels, fn)(m, n, k, ctypes.c_void_p(a_c.data_ptr()), ctypes.c_void_p(b_at),
                                1, n, None, ctypes.c_void_p(c.data_ptr()))
    assert torch.equal(c.to(torch.int64), a @ b.T)
    del pages


# fused kernel -> (a, b, y dtype, y's clamp range)
MATMUL_RQ_TYPES = {"rq8_s8_s8_s8": (S8, S8, torch.int8, -128, 127),
                   "rq8_u8_s8_u8": (U8, S8, torch.uint8, 0, 255),
                   "rq8_s8_u8_s16": (S8, U8, torch.int16, -300, 300),
                   "rq8_u8_u8_s32": (U8, U8, torch.int32, -(1 << 30), (1 << 30) + 5)}


@pytest.mark.parametrize("fn", MATMUL_RQ_TYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 17, 3), (9, 33, 600), (8, 40, 513),
                                   (197, 64, 197), (300, 70, 1030), (3, 5, 0)])
@pytest.mark.parametrize("per_channel", [0, 1])
def test_matmul_requantize_kernel_equals_product_then_requantize(matmul_kernels, fn, m, n, k,
                                                                 per_channel):
    """The product with its requantization in one call (the VNNI kernel requantizes from
    its accumulators in the last K block, the others after the product) equals
    clamp(requantize(a b^T + bias, m, e)) of intvit.arith for a per-tensor or per-channel
    pair, over one and several K blocks (600, 1030 > 512), partial panels and row blocks,
    shifts from 0 (no rounding half) to 62 and multipliers up to 2^31 - 1."""
    want, y = run_matmul_requantize(matmul_kernels, fn, m, n, k, per_channel,
                                    (n, m, 0, n, 0, n, 0), m * n)
    assert torch.equal(y.to(torch.int64).reshape(m, n), want)


def run_matmul_requantize(lib, fn: str, m: int, n: int, k: int, per_channel: int,
                          layout: tuple[int, ...], y_size: int, y_at: int = 0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """clamp(requantize(a b^T + bias, m, e)) of intvit.arith for random a, b, bias and a
    per-tensor or per-channel pair (shifts 0 to 62, multipliers up to 2^31 - 1), and the
    fused kernel ``fn``'s y: a buffer of ``y_size`` values (7 where it writes none), its
    output written from element ``y_at`` in ``layout`` (the kernel's seven ints)."""
    (dtype, lo, hi), (b_dtype, b_lo, b_hi), y_dtype, y_lo, y_hi = MATMUL_RQ_TYPES[fn]
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k + per_channel)
    a = torch.randint(lo, hi + 1, (m, k), generator=g)
    b = torch.randint(b_lo, b_hi + 1, (n, k), generator=g)
    bias = torch.randint(-1000, 1000, (n,), generator=g, dtype=torch.int32)
    count = n if per_channel else 1
    mult = torch.randint(1, 1 << 31, (count,), generator=g)
    mult[0] = (1 << 31) - 1
    shift = torch.randint(30, 48, (count,), generator=g)
    shift[0], shift[-1] = 62, 0
    want = requantize(a @ b.T + bias.to(torch.int64), mult, shift).clamp(y_lo, y_hi)
    a_c, b_c = a.to(dtype).contiguous(), b.to(b_dtype).contiguous()
    m32, e8 = mult.to(torch.int32), shift.to(torch.int8)
    c = torch.zeros(m, n, dtype=torch.int32)
    y = torch.full((y_size,), 7, dtype=y_dtype)
    ptr, i32 = ctypes.c_void_p, ctypes.c_int32
    getattr(lib, fn)(m, n, k, ptr(a_c.data_ptr()), ptr(b_c.data_ptr()), k, 1,
                     ptr(bias.data_ptr()), ptr(c.data_ptr()), ptr(m32.data_ptr()), ptr(e8.data_ptr()), per_channel,
                     i32(y_lo), i32(y_hi), ptr(y.data_ptr() + y_at * y.element_size()),
                     (i32 * 7)(*layout))
    return want, y


# (m, n, k, (ldy, row_block, row_block_stride, block, block_stride, group, group_stride),
# y's size, first element): head-major q, k, v of a ViT's linear layer (blocks of 32 and
# 64 columns, a block of 16 that no vector epilogue takes), of Swin's 3 windows of 5
# tokens with 2 heads of 32 (q, k, v, window, head, token, value), one head's context
# into its columns of the merged heads, a partial last row block and several K blocks
LAYOUTS = [(197, 192, 64, (64, 197, 0, 64, 197 * 64, 192, 0), 197 * 192, 0),
           (9, 96, 600, (32, 9, 0, 32, 9 * 32, 96, 0), 9 * 96, 0),
           (10, 48, 5, (16, 10, 0, 16, 10 * 16, 48, 0), 10 * 48, 0),
           (15, 192, 40, (32, 5, 2 * 5 * 32, 32, 5 * 32, 64, 3 * 2 * 5 * 32), 15 * 192, 0),
           (197, 64, 197, (192, 197, 0, 64, 0, 64, 0), 197 * 192, 64),
           (13, 20, 33, (60, 13, 0, 20, 0, 20, 0), 13 * 60, 40)]


@pytest.mark.parametrize("fn", ["rq8_s8_s8_s8", "rq8_u8_u8_s32"])
@pytest.mark.parametrize("m,n,k,layout,size,at", LAYOUTS)
def test_matmul_requantize_kernel_writes_the_output_layout(matmul_kernels, fn, m, n, k,
                                                           layout, size, at):
    """The fused kernel writes value (i, j) at (i / row_block) * row_block_stride +
    (i % row_block) * ldy + (j / group) * group_stride + (j % group / block) *
    block_stride + j % block from its output pointer and no other element of the
    buffer."""
    want, y = run_matmul_requantize(matmul_kernels, fn, m, n, k, 1, layout, size, at)
    ldy, row_block, row_block_stride, block, block_stride, group, group_stride = layout
    i, j = torch.meshgrid(torch.arange(m), torch.arange(n), indexing="ij")
    places = (at + (i // row_block) * row_block_stride + (i % row_block) * ldy
              + (j // group) * group_stride + (j % group // block) * block_stride
              + j % block).reshape(-1)
    expected = torch.full((size,), 7, dtype=torch.int64)
    expected[places] = want.reshape(-1)
    assert places.unique().numel() == m * n
    assert torch.equal(y.to(torch.int64), expected)


@pytest.mark.parametrize("kernels", ["default", "vnni", "avx512", "amx"])
@pytest.mark.parametrize("arch,family", [("vit", "ibert"), ("swin", "ivit")])
def test_sanitized_build_is_clean_and_exact(models, arch, family, kernels):
    """UBSan and ASan (the scratch buffer is allocated at exactly the planned size), with
    the compiler's default target and with the 8-bit kernels (avx512: the row vectors too)."""
    flags = SANITIZE + (() if kernels == "default" else kernel_build(kernels))
    model, program, library = models[arch, family]
    _, size, _ = ARCHS[arch]
    x = images(3, size, seed=8)
    logits, _ = run_harness(library, x, flags)
    assert torch.equal(logits, model.forward_int(x).value)


def test_clang_build_is_exact(models):
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed (the project does not need it)")
    model, program, library = models["swin", "mixed"]
    engine = CEngine(program, flags=("-O2",), library=library, cc=clang)
    x = images(4, 24, seed=9)
    assert torch.equal(engine(x), model.forward_int(x).value)


@pytest.mark.parametrize("arch,family", [("vit", "ppoly"), ("swin", "ibert")])
def test_debug_build_replays_golden_vectors(models, arch, family, tmp_path):
    _, program, _ = models[arch, family]
    _, size, _ = ARCHS[arch]
    write_golden(program, images(2, size, seed=5), tmp_path / "golden", progress=False)
    report = replay_golden(tmp_path / "golden")
    assert report.ok and report.nodes == len(program.nodes) - 1
    # a changed golden value is found, named by its node
    from safetensors.torch import load_file, save_file
    node = next(n for n in sorted((tmp_path / "golden" / "nodes").iterdir())
                if "layernorm" in n.name)
    tensors = load_file(str(node))
    tensors["output"] = tensors["output"].clone()
    tensors["output"].view(-1)[0] += 1
    save_file(tensors, str(node))
    bad = replay_golden(tmp_path / "golden")
    assert len(bad.mismatches) == 1 and "layernorm" in bad.mismatches[0]


GUARDED_INCLUDES = {"immintrin.h": r"#if defined\(__AVX2__\) && !defined\(INTVIT_PORTABLE\)\s*",
                    "omp.h": r"#ifdef _OPENMP\s*"}


def test_body_is_integer_only_and_self_contained(models):
    _, program, library = models["swin", "ibert"]
    body = {n: t for n, t in library.files.items()
            if n.endswith((".c", ".h")) and n != "intvit_model_float.c"}
    assert set(body) == {"intvit_model.c", "intvit_model.h", "intvit_weights.c",
                         "intvit_weights.h", "intvit_kernels.c", "intvit_kernels.h"}
    for name, text in body.items():
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        floats = [line for line in code.splitlines() if re.search(r"\b(float|double)\b", line)]
        if name == "intvit_model.h":  # declares the float entry point, nothing else
            assert len(floats) == 3 and all(re.search(r"run_float|quantize|logit_scale", f)
                                            for f in floats)
        else:
            assert not floats, name
        includes = set(re.findall(r"#include <([\w.]+)>", code))
        assert includes <= {"stdint.h", "string.h"} | GUARDED_INCLUDES.keys(), name
        for header in includes & GUARDED_INCLUDES.keys():  # only where the compiler has it
            assert re.search(GUARDED_INCLUDES[header] + r"[^#]*#include <" + header, code), name
        assert "malloc" not in code, name


def test_memory_plan_reuses_activations_and_is_stated(models):
    _, program, library = models["vit", "ivit"]
    mem = library.memory
    assert 0 < mem.scratch_bytes < mem.activations_bytes / 3
    largest = max(v.nbytes for v in library.plan.values.values() if v.kind == "scratch")
    assert mem.scratch_bytes >= largest
    int8_weights = sum(program.tensors[n.params["weight"]].numel()
                       for n in program.nodes if n.op == "linear")
    assert int8_weights < mem.weight_bytes < 1.5 * int8_weights + 20000
    header = library.files["intvit_model.h"]
    assert f"#define INTVIT_MODEL_SCRATCH_BYTES {mem.scratch_bytes}" in header
    assert str(mem.scratch_bytes) in library.files["README.md"]


@pytest.mark.parametrize("arch", ARCHS)
def test_products_read_their_operands_in_place(models, arch):
    """The attention scores q @ k^T take k (the transpose's input) as their transposed
    operand (strides k, 1), the context products v as stored (strides 1, n), with no
    temporary or copy; the logits stay exact (every whole-model test here), k lives until
    the scores."""
    _, program, library = models[arch, "ivit"]
    plan = library.plan
    scores = [i for i, n in enumerate(program.nodes) if n.op == "matmul" and "scores" in n.module]
    context = [i for i, n in enumerate(program.nodes) if n.op == "matmul" and "context" in n.module]
    assert scores and set(plan.bt_sources) == set(scores) and context
    code = library.files["intvit_model.c"]
    for i in context:
        n = program.nodes[i]
        width = library.plan.values[n.inputs[1]].shape[-1]
        assert re.search(rf"\+ l \* \d+, 1, {width}, NULL", node_code(code, i))
        assert "intvit_copy" not in node_code(code, i)
    for i in scores:
        k = plan.bt_sources[i]
        producer = next(n for n in program.nodes if n.output == program.nodes[i].inputs[1])
        assert producer.op == "transpose" and producer.inputs == [k]
        assert plan.root(k).last >= i
    k_transposes = {j for j, n in enumerate(program.nodes)
                    for i in scores if n.output == program.nodes[i].inputs[1]}
    assert plan.debug_only == k_transposes
    code = library.files["intvit_model.c"]
    for j in k_transposes:  # the copy only in the debug build
        assert re.search(rf"/\* node {j}: transpose [^\n]*\n\s*#ifdef INTVIT_DEBUG\n"
                         r"\s*intvit_copy_[^\n]*\n[^\n]*INTVIT_DUMP[^\n]*\n\s*#endif", code)


@pytest.mark.parametrize("arch", ARCHS)
def test_products_take_their_requantization_in_one_call(models, arch):
    """Every 8-bit product that only a plain requantize reads (each block's linear layers
    and attention products; not the head, whose int32 logits go out) computes it
    in its own kernel call, the requantize node has no call of its own, and its output
    lives from the product on (the logits stay exact: every whole-model test here)."""
    _, program, library = models[arch, "ivit"]
    plan, nodes = library.plan, program.nodes
    products = [i for i, n in enumerate(nodes) if n.op in ("linear", "matmul")]
    readers = {i: [j for j, n in enumerate(nodes) if nodes[i].output in n.inputs]
               for i in products}
    want = {i: r[0] for i, r in readers.items()
            if len(r) == 1 and nodes[r[0]].op == "requantize" and len(nodes[r[0]].inputs) == 1}
    scores = [i for i in products if "scores" in nodes[i].module]
    assert plan.fused == want
    # not fused: the head; in Swin also the scores, whose requantize adds the relative
    # position bias
    assert len(want) == len(products) - 1 - (len(scores) if arch == "swin" else 0)
    code = library.files["intvit_model.c"]
    for i, j in want.items():
        assert "intvit_matmul8_rq_" in node_code(code, i)
        requantize = node_code(code, j)
        assert "INTVIT_DUMP" in requantize and "intvit_requantize" not in requantize
        assert plan.values[nodes[j].output].first == i


@pytest.mark.parametrize("kind", ["portable", "avx2", "avx512"])
@pytest.mark.parametrize("in_range", [None, (0, 255), (-32768, 32767)],
                         ids=["int8", "uint8", "int16"])
def test_c_quantize_equals_intvit_arith_on_edge_values(models, kind, in_range):
    """The library's float-to-integer input quantization (vectors with AVX2 or AVX-512, a
    scalar tail) equals intvit.arith.quantize in float32 at every rounding edge (each x / scale
    at k + 1/2 and its float neighbours, for k near lo, near 0 and near hi), past the clamp on
    both sides and at infinities; NaN goes to lo. For each input type the stores write:
    int8 (the test model's own range), uint8 and int16 (its quantize node given those
    ranges)."""
    _, program, library = models["vit", "ivit"]
    if in_range is not None:
        nodes = [replace(program.nodes[0], attrs={**program.nodes[0].attrs, "lo": in_range[0],
                                                  "hi": in_range[1]}), *program.nodes[1:]]
        program = replace(program, nodes=nodes)
        library = generate(program)
    engine = CEngine(program, flags=("-O2", *kernel_build(kind)), library=library)
    scale = program.tensors["input.scale"].to(torch.float32)
    lo, hi = program.nodes[0].attrs["lo"], program.nodes[0].attrs["hi"]
    ks = torch.cat([torch.arange(lo - 3, lo + 200), torch.arange(-200, 200),
                    torch.arange(hi - 200, hi + 4)]).unique()
    edges = (ks.to(torch.float32) + 0.5) * scale
    x = torch.cat([edges, torch.nextafter(edges, torch.tensor(-float("inf"))),
                   torch.nextafter(edges, torch.tensor(float("inf"))),
                   torch.tensor([0.0, -0.0, 1e30, -1e30, float("inf"), -float("inf")])])
    n = library.plan.input.numel
    assert x.numel() < n - 2
    x = torch.cat([x, torch.randn(n) * scale * 100])[:n].contiguous()
    x[n - 2] = float("nan")
    dtype = {"int8_t": torch.int8, "uint8_t": torch.uint8, "int16_t": torch.int16}
    q = torch.zeros(n, dtype=dtype[library.plan.input.ctype])
    assert library.plan.input.ctype == {None: "int8_t", (0, 255): "uint8_t",
                                        (-32768, 32767): "int16_t"}[in_range]
    engine.lib.intvit_model_quantize(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(q.data_ptr()))
    want = quantize(x, scale, lo, hi)
    want[n - 2] = lo
    assert torch.equal(q.to(torch.int64), want.to(torch.int64))


def node_code(code: str, i: int) -> str:
    """The C text of node ``i`` of a generated network, up to its profile tick."""
    return re.search(rf"/\* node {i}: [^\n]*\n(.*?)INTVIT_TICK\({i}\);", code, re.S).group(1)


# models whose heads are 32 wide: the q, k, v linear layers write head-major q, k, v (Swin:
# 4 windows of 2 heads in its first stage, one window of 4 in its second)
HEAD32 = {"vit": (dict(arch="vit", img_size=32, patch_size=8, embed_dim=64, depth=2,
                       num_heads=2, num_classes=10), 32),
          "swin": (dict(arch="swin", img_size=28, patch_size=2, embed_dim=64, depths=(2, 2),
                        heads=(2, 4), window_size=7, num_classes=10), 28)}


@pytest.fixture(scope="module")
def head32():
    """arch -> (model, program, library) of HEAD32."""
    out = {}
    for arch, (cfg, _) in HEAD32.items():
        model = calibrated(model_config("custom", **cfg), FAMILIES["ivit"])
        program = export_program(model)
        out[arch] = model, program, generate(program)
    return out


@pytest.mark.parametrize("arch", [*ARCHS, *(f"{a} head32" for a in HEAD32)])
def test_products_write_the_layout_of_the_transpose_that_reads_them(models, head32, arch):
    """Each head's context product writes its columns of the merged heads, and (with heads
    of 32 values) each q, k, v linear layer writes head-major q, k, v: the transposes that
    read them have no code, their outputs live from the product, and the requantized
    outputs have no storage of their own (the logits stay exact: every whole-model test
    here, and below for the 32-wide heads)."""
    wide = arch.endswith("head32")
    _, program, library = head32[arch.split()[0]] if wide else models[arch, "ivit"]
    plan, nodes = library.plan, program.nodes
    context = {i for i, n in enumerate(nodes) if n.op == "matmul" and "context" in n.module}
    qkv = {i for i, n in enumerate(nodes) if n.op == "linear" and "qkv" in n.module}
    assert context | (qkv if wide else set()) <= set(plan.layouts)
    code = library.files["intvit_model.c"]
    for i, layout in plan.layouts.items():
        assert nodes[layout.transpose].op == "transpose"
        assert "intvit_copy" not in node_code(code, layout.transpose)
        assert plan.values[layout.target].first == i
        assert plan.values[nodes[plan.fused[i]].output].kind == "layout"
        assert f"{{{', '.join(map(str, layout.ints))}}};" in library.files["intvit_model.c"]


@pytest.mark.parametrize("kind", list(KERNEL_BUILDS))
@pytest.mark.parametrize("arch", HEAD32)
def test_head_major_layouts_are_exact_on_every_kernel_build(head32, arch, kind, tmp_path):
    """The 32-wide heads' models (q, k, v written head-major by their linear layers, Swin's
    by window and head) on every kernel build, on 1, 2 and 3 threads, equal the eval-mode
    model; their debug builds replay the golden vectors (the layout values gathered
    back)."""
    model, program, library = head32[arch]
    x = images(3, HEAD32[arch][1], seed=3)
    want = model.forward_int(x).value
    for threads in THREADS:
        engine = CEngine(program, threads=threads, library=library,
                         flags=("-O1", *kernel_build(kind), *SPLIT_ALL))
        assert torch.equal(engine(x), want)
        assert torch.equal(engine(x[:1]), want[:1])
    if kind == "portable":
        write_golden(program, x[:2], tmp_path / "golden", progress=False)
        report = replay_golden(tmp_path / "golden")
        assert report.ok and report.nodes == len(program.nodes) - 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_plan_shapes_are_those_of_a_run(models, arch, family):
    """The shapes the plan derives without computing equal those of every value of one
    image run through the int engine (its ops), constants and the float ends included."""
    _, program, library = models[arch, family]
    _, size, _ = ARCHS[arch]
    run = {k: tuple(v.shape) for k, v in IntRuntime(program).run(images(1, size)).items()}
    assert trace_shapes(program) == run
    assert {k: v.shape for k, v in library.plan.values.items()} == {
        k: run[k] for k in library.plan.values}
    float_ends = {program.input, *(n.output for n in program.nodes if n.op == "dequantize")}
    assert set(run) - set(library.plan.values) == {"input.scale", "output.scale", *float_ends}


def test_accumulator_past_int32_is_refused(models):
    _, program, _ = models["vit", "ivit"]
    node = next(n for n in program.nodes if n.op == "linear")
    bias = program.tensors[node.params["bias"]]
    program = type(program)(program.nodes, {**program.tensors, node.params["bias"]:
                                            torch.full_like(bias, 2**31 - 1)},
                            program.meta, program.input, program.output)
    with pytest.raises(ProgramError, match="past int32"):
        generate(program)


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_with_a_negative_exponential_is_refused(models, family):
    _, program, _ = models["vit", family]
    node = next(n for n in program.nodes if n.op == "softmax")
    table = program.tensors[node.params["exp_table"]].clone()
    table[0] = -1
    program = type(program)(program.nodes, {**program.tensors, node.params["exp_table"]: table},
                            program.meta, program.input, program.output)
    with pytest.raises(ProgramError, match="negative entry"):
        generate(program)


def test_cli_export_c_inspect_and_max_ram(models, tmp_path, capsys):
    model, program, _ = models["vit", "ibert"]
    ck = save_checkpoint(tmp_path / "ck.safetensors", model)
    assert main(["export", "--checkpoint", str(ck), "--format", "c", "--out",
                 str(tmp_path / "lib")]) == 0
    out = capsys.readouterr().out
    assert "scratch (RAM" in out and (tmp_path / "lib" / "intvit_model.h").is_file()
    scratch = int(re.search(r"SCRATCH_BYTES (\d+)",
                            (tmp_path / "lib" / "intvit_model.h").read_text()).group(1))
    program.save(tmp_path / "p.safetensors")
    assert main(["inspect", str(tmp_path / "p.safetensors")]) == 0
    assert f"scratch (RAM, activations reused): {scratch} bytes" in capsys.readouterr().out
    assert main(["export", "--program", str(tmp_path / "p.safetensors"), "--format", "c",
                 "--out", str(tmp_path / "small"), "--max-ram", f"{scratch - 1}"]) == 2
    assert f"{scratch}-byte scratch buffer" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()
    assert main(["export", "--program", str(tmp_path / "p.safetensors"), "--format", "c",
                 "--out", str(tmp_path / "fits"), "--max-ram", "1M"]) == 0
    assert (tmp_path / "fits" / "intvit_model.c").read_text() == \
        (tmp_path / "lib" / "intvit_model.c").read_text()
    assert main(["export", "--program", str(tmp_path / "p.safetensors"), "--format", "c",
                 "--out", str(tmp_path / "x"), "--max-ram", "lots"]) == 2
    assert "byte count" in capsys.readouterr().err
    # what `intvit eval` evaluates, on a data set's validation images, equals the C build
    assert main(["verify", "--checkpoint", str(ck), "--engines", "model,c", "--data",
                 "synthetic", "--limit", "24", "--batch-size", "8"]) == 0
    assert "model vs c: 0 of 240 logits differ" in capsys.readouterr().out


def test_full_size_deit_tiny_is_bit_exact():
    model = calibrated(model_config("deit_tiny"), FAMILIES["ivit"])
    x = images(1, 224, seed=4)
    program = export_program(model, x)  # checks the program against the model on x
    got = CEngine(program, flags=TEST_FLAGS)(x)
    assert torch.equal(got, make_engine("int", program)(x))


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    """The kernel header's scalar helpers, compiled and callable."""
    dll = kernel_snippet(
        tmp_path_factory.mktemp("helpers"),
        "int64_t fs(int64_t v, int32_t k) { return intvit_floor_shift(v, k); }\n"
        "int64_t rq(int64_t v, int32_t m, int32_t e) { return intvit_requant(v, m, e); }\n"
        "int64_t fd(int64_t v, int64_t d) { return intvit_floor_div(v, d); }\n"
        "int64_t rd(int64_t v, int64_t d) { return intvit_round_div(v, d); }\n"
        "int64_t sq(int64_t v) { return intvit_isqrt(v); }\n")
    i64, i32 = ctypes.c_int64, ctypes.c_int32
    for name, args in {"fs": [i64, i32], "rq": [i64, i32, i32], "fd": [i64, i64],
                       "rd": [i64, i64], "sq": [i64]}.items():
        getattr(dll, name).restype = i64
        getattr(dll, name).argtypes = args
    return dll


def edges(bits: int):
    near = [s * ((1 << i) + d) for i in range(bits - 1) for d in (-1, 0, 1) for s in (1, -1)]
    return st.one_of(st.sampled_from(near), st.integers(-(1 << (bits - 1)) + 1,
                                                        (1 << (bits - 1)) - 1))


@settings(max_examples=300, deadline=None)
@given(v=edges(32), m=st.integers(-(1 << 31) + 1, (1 << 31) - 1), e=st.integers(0, 62),
       d=st.integers(1, 1 << 20), w=st.integers(0, (1 << 62)))
def test_c_helpers_equal_intvit_arith(helpers, v, m, e, d, w):
    t = torch.tensor([v])
    assert helpers.fs(v, e) == v >> e
    assert helpers.rq(v, m, e) == int(requantize(t, m, e))
    assert helpers.fd(v, d) == int(floor_div(t, d))
    assert helpers.rd(v, d) == int(round_div(t, d))
    assert helpers.sq(w) == int(isqrt(torch.tensor([w])))


# element type -> (ctype, dtype, range): the C export's value types
INT_TYPES = {"s8": ("int8_t", torch.int8, (-128, 127)),
             "u8": ("uint8_t", torch.uint8, (0, 255)),
             "s16": ("int16_t", torch.int16, (-(1 << 15), (1 << 15) - 1)),
             "s32": ("int32_t", torch.int32, (-(1 << 31), (1 << 31) - 1))}
REQUANTIZES = [(x, y) for x in INT_TYPES for y in INT_TYPES]
REQUANTIZE_ADDS = [(x, r, y) for x in INT_TYPES for r in INT_TYPES for y in INT_TYPES]


@pytest.fixture(scope="module", params=["portable", "avx2", "vnni"])
def requantize_kernels(request, tmp_path_factory):
    """The requantize kernels alone for every x, residual and y type: portable, the AVX2
    vectors and the AVX-512 vectors (the vnni build)."""
    ctype = {short: spec[0] for short, spec in INT_TYPES.items()}
    source = "".join(f"INTVIT_DEFINE_REQUANTIZE(rq_{x}_{y}, {ctype[x]}, {ctype[y]})\n"
                     for x, y in REQUANTIZES)
    source += "".join(f"INTVIT_DEFINE_REQUANTIZE_ADD(rqa_{x}_{r}_{y}, {ctype[x]}, {ctype[r]}, "
                      f"{ctype[y]})\n" for x, r, y in REQUANTIZE_ADDS)
    return kernel_snippet(tmp_path_factory.mktemp("requantize"), source,
                          kernel_build(request.param))


def requantize_input(short: str, rows: int, C: int, g: torch.Generator) -> torch.Tensor:
    """Random values over the type's whole range, its extremes, 0 and +-1 first."""
    lo, hi = INT_TYPES[short][2]
    x = torch.randint(lo, hi + 1, (rows, C), generator=g)
    edge = torch.tensor([lo, hi, 0, 1, max(lo, -1), hi // 2 + 1, lo // 2])
    x.view(-1)[: min(x.numel(), edge.numel())] = edge[: x.numel()]
    return x


def requantize_pair(count: int, lowest_shift: int, g: torch.Generator):
    """count random multipliers over all of int32 and shifts lowest_shift..62; the extreme
    pairs (-2^31, lowest_shift) and (2^31 - 1, 62) at both ends (one of them, by the
    generator, for a single pair)."""
    m = torch.randint(-(1 << 31), 1 << 31, (count,), generator=g)
    e = torch.randint(lowest_shift, 63, (count,), generator=g)
    ends = [(-(1 << 31), lowest_shift), ((1 << 31) - 1, 62)]
    if count == 1:
        ends = [ends[int(torch.randint(0, 2, (1,), generator=g))]]
    for at, (m_end, e_end) in zip((0, -1), ends):
        m[at], e[at] = m_end, e_end
    return m, e


def c_array(t: torch.Tensor, dtype) -> tuple[torch.Tensor, ctypes.c_void_p]:
    c = t.to(dtype).contiguous()
    return c, ctypes.c_void_p(c.data_ptr())


@pytest.mark.parametrize("rows,C,res_rows", [(1, 1, 1), (3, 7, 1), (2, 8, 2), (5, 70, 5),
                                             (4, 129, 2), (6, 16, 3), (2, 31, 1),
                                             (3, 48, 3), (2, 400, 1)])
@pytest.mark.parametrize("per_channel,res_per_channel", [(0, 0), (1, 1), (1, 0), (0, 1)])
def test_requantize_kernels_equal_intvit_arith(requantize_kernels, rows, C, res_rows,
                                               per_channel, res_per_channel):
    """Every x, residual and y type, each over its whole range with its extremes; rows
    around the 16-value vectors (and their scalar tail); a per-tensor or per-channel pair
    for x and for the residual, multipliers over all of int32 (-2^31 included), shifts up
    to 62; a residual of fewer rows (row r reads its row r % res_rows); outputs clamped to
    the y type's range: every value equals clamp(requantize(x, m, e) [+ requantize(res,
    rm, re)]) of intvit.arith. The residual's shifts start at 1, so that the sum of two
    requantized values stays below 2^63 as the plan requires."""
    g = torch.Generator().manual_seed(rows * 1000 + C * 10 + per_channel * 2 + res_per_channel)
    m, e = requantize_pair(C if per_channel else 1, 0, g)
    rm, re_ = requantize_pair(C if res_per_channel else 1, 1, g)
    (m32, m_p), (e8, e_p) = c_array(m, torch.int32), c_array(e, torch.int8)
    (rm32, rm_p), (re8, re_p) = c_array(rm, torch.int32), c_array(re_, torch.int8)
    xs = {t: requantize_input(t, rows, C, g) for t in INT_TYPES}
    residuals = {t: requantize_input(t, res_rows, C, g) for t in INT_TYPES}
    rx = {t: requantize(x, m, e) for t, x in xs.items()}
    rres = {t: requantize(r, rm, re_).repeat(rows // res_rows, 1) for t, r in residuals.items()}
    x_in = {t: c_array(x, INT_TYPES[t][1]) for t, x in xs.items()}
    res_in = {t: c_array(r, INT_TYPES[t][1]) for t, r in residuals.items()}
    for x, y in REQUANTIZES:
        lo, hi = INT_TYPES[y][2]
        out = torch.zeros(rows, C, dtype=INT_TYPES[y][1])
        getattr(requantize_kernels, f"rq_{x}_{y}")(rows, C, x_in[x][1], m_p, e_p, per_channel,
                                                   lo, hi, ctypes.c_void_p(out.data_ptr()))
        assert torch.equal(out.to(torch.int64), rx[x].clamp(lo, hi)), (x, y)
    for x, r, y in REQUANTIZE_ADDS:
        lo, hi = INT_TYPES[y][2]
        out = torch.zeros(rows, C, dtype=INT_TYPES[y][1])
        getattr(requantize_kernels, f"rqa_{x}_{r}_{y}")(
            rows, C, x_in[x][1], m_p, e_p, per_channel, res_in[r][1], res_rows, rm_p, re_p,
            res_per_channel, lo, hi, ctypes.c_void_p(out.data_ptr()))
        assert torch.equal(out.to(torch.int64), (rx[x] + rres[r]).clamp(lo, hi)), (x, r, y)


@pytest.fixture(scope="module", params=["portable", "avx2", "avx512"])
def row_kernels(request, tmp_path_factory):
    """The softmax and table look-up kernels alone: portable, the AVX2 vectors (max,
    exponential gather, row sum, last step) and the AVX-512 vectors (the same, and the
    8-bit look-up: the avx512 build with DQ and VBMI)."""
    return kernel_snippet(tmp_path_factory.mktemp("rows"),
                          "".join(f"INTVIT_DEFINE_SOFTMAX(sm_{x}, {SOFTMAX_TYPES[x][0]}, "
                                  f"{SOFTMAX_TYPES[x][1]})\n" for x in SOFTMAX_TYPES)
                          + "".join(f"INTVIT_DEFINE_LOOKUP(lu_{x}_{y}, {INT_TYPES[x][0]}, "
                                    f"{INT_TYPES[y][0]})\n" for x, y in LOOKUPS),
                          kernel_build(request.param))


# softmax input -> (x ctype, y ctype, x dtype, x range, y dtype, clamp range): int32 rows
# near INT32_MIN and INT32_MAX (the vector index x + table_len - 1 - top wraps on the way)
SOFTMAX_TYPES = {
    "s8": ("int8_t", "uint8_t", torch.int8, (-128, 127), torch.uint8, (0, 255)),
    "u8": ("uint8_t", "int8_t", torch.uint8, (0, 255), torch.int8, (-128, 127)),
    "s16": ("int16_t", "int16_t", torch.int16, (-(1 << 15), (1 << 15) - 1), torch.int16,
            (-300, 300)),
    "s32": ("int32_t", "int32_t", torch.int32, ((1 << 31) - 1000, (1 << 31) - 1), torch.int32,
            (-(1 << 30), (1 << 30) + 5)),
}
SOFTMAX_RANGES = {"s32 low": ("s32", (-(1 << 31), -(1 << 31) + 999))}
SOFTMAX_LENGTHS = [1, 7, 15, 16, 17, 31, 49, 63, 64, 65, 80, 128, 197, 1024, 1025, 1030,
                   2100]


def softmax_rows(x_lo: int, x_hi: int, L: int, g: torch.Generator) -> torch.Tensor:
    """Random rows, then the extremes: constant rows (every e_i = e_max, the largest sum),
    one maximum among minima (d = 1 - table_len), alternating extremes."""
    rows = torch.randint(x_lo, x_hi + 1, (7, L), generator=g)
    rows[3], rows[4] = x_hi, x_lo
    rows[5] = x_lo
    rows[5, L // 2] = x_hi
    rows[6, ::2], rows[6, 1::2] = x_hi, x_lo
    return rows


def run_softmax(kernels, name: str, x: torch.Tensor, x_dtype, table: torch.Tensor,
                numerator: int, m: int, e: int, y_dtype, lo: int, hi: int) -> torch.Tensor:
    rows, L = x.shape
    xc, t32 = x.to(x_dtype).contiguous(), table.to(torch.int32).contiguous()
    y = torch.zeros(rows, L, dtype=y_dtype)
    ptr = ctypes.c_void_p
    getattr(kernels, name)(rows, L, ptr(xc.data_ptr()), ptr(t32.data_ptr()), table.numel(),
                           ctypes.c_int64(numerator), m, e, lo, hi, ptr(y.data_ptr()))
    return y.to(torch.int64)


@pytest.mark.parametrize("L", SOFTMAX_LENGTHS)
@pytest.mark.parametrize("x_type", [*SOFTMAX_TYPES, *SOFTMAX_RANGES])
@pytest.mark.parametrize("numerator", [NUMERATOR_IVIT, NUMERATOR_IBERT])
def test_softmax_kernels_equal_softmax_from_table(row_kernels, L, x_type, numerator):
    """Every x type over its range (int32: near both ends), every row length around the
    16-lane vectors (the last step too) and the 1024-value blocks (longer rows read their
    exponentials again), random and extreme rows, a random table of
    values up to e_max = (numerator - 1) // L (the largest sum the exporter allows: I-BERT's
    passes 32 bits), a multiplier near 2^31 and the most negative one the plan allows
    (numerator * |m| < 2^63: -2^31 for I-ViT) with a shift that keeps outputs in range, and
    a random pair: every value equals intvit.approx.rows.softmax_from_table."""
    base, x_range = SOFTMAX_RANGES.get(x_type, (x_type, None))
    x_ctype, _, x_dtype, x_full, y_dtype, (lo, hi) = SOFTMAX_TYPES[base]
    x_lo, x_hi = x_range or x_full
    g = torch.Generator().manual_seed(L * 10 + len(x_type) + numerator % 7)
    e_max = min((numerator - 1) // L, (1 << 31) - 1)  # the table is int32
    table = torch.randint(0, e_max + 1, (x_hi - x_lo + 1,), generator=g)
    table[-1] = e_max
    x = softmax_rows(x_lo, x_hi, L, g)
    m_low = max(-(1 << 31), -(((1 << 63) - 1) // numerator))
    for m, e in [((1 << 31) - 1, 54), (m_low, 54),
                 (int(torch.randint(1, 1 << 31, (1,), generator=g)),
                  int(torch.randint(0, 63, (1,), generator=g)))]:
        want = softmax_from_table(x, table, e_max, numerator, torch.tensor(m), torch.tensor(e),
                                  lo, hi)
        got = run_softmax(row_kernels, f"sm_{base}", x, x_dtype, table, numerator, m, e,
                          y_dtype, lo, hi)
        assert torch.equal(got, want), (m, e)


@settings(max_examples=100, deadline=None)
@given(L=st.integers(1, 300), seed=st.integers(0, 1 << 30),
       x_type=st.sampled_from(list(SOFTMAX_TYPES)), m=st.integers(-(1 << 31), (1 << 31) - 1),
       e=st.integers(0, 62))
def test_softmax_kernels_equal_softmax_from_table_on_any_row(row_kernels, L, seed, x_type, m, e):
    """Hypothesis: any row length, rows of values in a random part of the type's range (a
    short table), any multiplier and shift."""
    _, _, x_dtype, (t_lo, t_hi), y_dtype, (lo, hi) = SOFTMAX_TYPES[x_type]
    g = torch.Generator().manual_seed(seed)
    x_lo = int(torch.randint(t_lo, t_hi + 1, (1,), generator=g))
    x_hi = min(t_hi, x_lo + int(torch.randint(0, 600, (1,), generator=g)))
    e_max = (NUMERATOR_IVIT - 1) // L
    table = torch.randint(0, e_max + 1, (x_hi - x_lo + 1,), generator=g)
    x = torch.randint(x_lo, x_hi + 1, (3, L), generator=g)
    want = softmax_from_table(x, table, e_max, NUMERATOR_IVIT, torch.tensor(m), torch.tensor(e),
                              lo, hi)
    got = run_softmax(row_kernels, f"sm_{x_type}", x, x_dtype, table, NUMERATOR_IVIT, m, e,
                      y_dtype, lo, hi)
    assert torch.equal(got, want)


# the (x, y) element types (INT_TYPES) of the look-ups built
LOOKUPS = [("s8", "s8"), ("u8", "s8"), ("s8", "u8"), ("u8", "u8"), ("s16", "s8"),
           ("s8", "s32")]


@pytest.mark.parametrize("x_type,y_type", LOOKUPS)
@pytest.mark.parametrize("n", [1, 63, 64, 65, 200, 4097, 197 * 24 + 5])
@pytest.mark.parametrize("span", ["full", "short", "one"])
def test_lookup_kernels_equal_table_indexing(row_kernels, x_type, y_type, n, span):
    """x over the whole 8-bit range (a 256-entry table, both halves of the vector look-up),
    a short table from a random lo (the 256-byte padded copy), a one-entry table; lengths
    around the 64-value vectors and the 4096-value blocks: y equals table[x - lo]."""
    x_ctype, x_dtype, (t_lo, t_hi) = INT_TYPES[x_type]
    _, y_dtype, (y_lo, y_hi) = INT_TYPES[y_type]
    g = torch.Generator().manual_seed(n * 10 + len(span))
    t_hi = min(t_hi, t_lo + 255) if span == "full" else t_hi
    if span == "full":
        x_lo, x_hi = t_lo, t_hi
    else:
        x_lo = int(torch.randint(t_lo, t_hi - 40, (1,), generator=g))
        x_hi = x_lo + (37 if span == "short" else 0)
    table = torch.randint(y_lo, y_hi + 1, (x_hi - x_lo + 1,), generator=g).to(y_dtype)
    x = torch.randint(x_lo, x_hi + 1, (n,), generator=g)
    x[: min(n, 2)] = torch.tensor([x_lo, x_hi])[: min(n, 2)]
    xc, y = x.to(x_dtype), torch.zeros(n, dtype=y_dtype)
    ptr = ctypes.c_void_p
    getattr(row_kernels, f"lu_{x_type}_{y_type}")(n, ptr(xc.data_ptr()), ptr(table.data_ptr()),
                                                 table.numel(), x_lo, ptr(y.data_ptr()))
    assert torch.equal(y, table[x - x_lo])


@pytest.fixture(scope="module", params=["portable", "avx2", "vnni", "avx512"])
def layernorm_kernels(request, tmp_path_factory):
    """The LayerNorm kernels alone, one per input type: portable, the AVX2 affine and row
    passes, the AVX-512 affine (the vnni build) and the vector row passes as well (the
    avx512 build: F and DQ)."""
    return kernel_snippet(tmp_path_factory.mktemp("layernorm"),
                          "INTVIT_DEFINE_LAYERNORM(ln_s8, int8_t, int8_t)\n"
                          "INTVIT_DEFINE_LAYERNORM(ln_u8, uint8_t, int8_t)\n"
                          "INTVIT_DEFINE_LAYERNORM(ln_s16, int16_t, int32_t)\n"
                          "INTVIT_DEFINE_LAYERNORM(ln_s32, int32_t, int32_t)\n",
                          kernel_build(request.param))


# input type: (torch dtype, output dtype, clamp range of the output)
LAYERNORM_TYPES = {"s8": (torch.int8, torch.int8, -128, 127),
                   "u8": (torch.uint8, torch.int8, -128, 127),
                   "s16": (torch.int16, torch.int32, -(1 << 30), 1 << 30),
                   "s32": (torch.int32, torch.int32, -(1 << 30), 1 << 30)}


def layernorm_rows(C: int, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    """Rows of random values, of one constant value at either end (variance 0), of the
    extremes alternating, and of random values near the top."""
    x = torch.randint(lo, hi + 1, (5, C), generator=g)
    x[1] = hi
    x[2] = lo
    x[3, ::2], x[3, 1::2] = hi, lo
    x[4] = torch.randint(hi - 3, hi + 1, (C,), generator=g)
    return x


@pytest.mark.parametrize("C", [1, 7, 8, 15, 16, 17, 70, 96, 129, 384, 768, 1000, 40000])
@pytest.mark.parametrize("x_type,in_bits,var_shift", [
    ("s8", 8, 0), ("s8", 8, 3), ("u8", 9, 0), ("u8", 9, 2), ("s16", 16, "32-bit"),
    ("s16", 16, 0), ("s32", 20, 0), ("s32", 31, 12)])
def test_layernorm_kernels_equal_layernorm_int(layernorm_kernels, C, x_type, in_bits,
                                               var_shift):
    """Rows of every input type the plan makes (in_bits-bit values, uint8 as 9), the
    variance shift 0, I-BERT's and others, rows past one int32 run of the vector sum (40000);
    multipliers up to 2^31 - 1, shifts 0..62, wide biases: every value equals
    intvit.approx.rows.layernorm_int in every vector lane and the scalar tails."""
    from intvit.approx.rows import layernorm_int, variance_shift_for_32_bits

    dtype, out_type, lo, hi = LAYERNORM_TYPES[x_type]
    half = 1 << (in_bits - 1)
    x_lo, x_hi = (0, 255) if x_type == "u8" else (-half, half - 1)
    if var_shift == "32-bit":
        var_shift = variance_shift_for_32_bits(in_bits, C)
    g = torch.Generator().manual_seed(C * 10 + in_bits + var_shift)
    x = layernorm_rows(C, x_lo, x_hi, g)
    m = torch.randint(1, 1 << 31, (C,), generator=g)
    m[0] = (1 << 31) - 1
    e = torch.randint(0, 63, (C,), generator=g)
    e[-1] = 0
    beta = torch.randint(-(1 << 20), 1 << 20, (C,), generator=g)
    want = layernorm_int(x, in_bits, var_shift, m, e, beta, lo, hi)
    xc, m32, e8, b32 = (t.to(d).contiguous() for t, d in
                        ((x, dtype), (m, torch.int32), (e, torch.int8), (beta, torch.int32)))
    y = torch.zeros(5, C, dtype=out_type)
    ptr = ctypes.c_void_p
    getattr(layernorm_kernels, f"ln_{x_type}")(
        5, C, ptr(xc.data_ptr()), var_shift, ptr(m32.data_ptr()), ptr(e8.data_ptr()),
        ptr(b32.data_ptr()), lo, hi, ptr(y.data_ptr()))
    assert torch.equal(y.to(torch.int64), want)
