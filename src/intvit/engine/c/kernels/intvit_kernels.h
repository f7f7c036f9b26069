/* intvit portable kernel layer: the integer arithmetic of an exported intvit model.
 *
 * Plain C99, integer types only, no allocation, no library beyond <stdint.h> and
 * <string.h>. The generated network (intvit_model.c) calls nothing else, so a target
 * replaces these kernels with its own (CMSIS-NN, HLS pragmas, vendor intrinsics)
 * without touching the network: see "Swapping kernels" in the generated README.
 *
 * Semantics, as in intvit's Python kernels (intvit.arith, intvit.quant.integer,
 * intvit.approx.rows):
 *
 *   floor_shift(v, k)  = floor(v / 2^k)                      (0 <= k <= 62)
 *   R(v; m, e)         = floor((v * m + 2^(e-1)) / 2^e)       requantization, 2^-1 := 0
 *   clamp(v, lo, hi)   = min(max(v, lo), hi)                 saturation
 *   floor_div(v, d)    = floor(v / d), d > 0
 *   round_div(v, d)    = floor(v / d + 1/2), d > 0
 *   isqrt(v)           = floor(sqrt(v)), v >= 0
 *
 * Right shifts of negative values are implementation-defined in C and signed overflow is
 * undefined: floor_shift is written as ~(~v >> k) for v < 0 (~v = -v - 1 >= 0 in the two's
 * complement that the exact-width types guarantee), which is the floor on every compiler
 * and compiles to one arithmetic shift. Every product is formed in a type that the
 * exporter proved wide enough (the bounds are checked when the C code is generated), so
 * nothing here can overflow.
 *
 * The kernels over several element types are written once as macros
 * (INTVIT_DEFINE_<KERNEL>(NAME, types...)); the generated intvit_kernels.c instantiates
 * the ones the model calls, one line each.
 */
#ifndef INTVIT_KERNELS_H
#define INTVIT_KERNELS_H

#include <stdint.h>
#include <string.h>

/* INTVIT_OMP("omp ...") is an OpenMP pragma when compiled with OpenMP, else nothing (the
 * kernels are the same integers for any number of threads: threads split the output
 * columns, never a sum). */
#ifdef _OPENMP
#include <omp.h>
#define INTVIT_OMP(text) _Pragma(text)
#define INTVIT_THREAD_INDEX() omp_get_thread_num()
#define INTVIT_THREAD_COUNT() omp_get_num_threads()
#else
#define INTVIT_OMP(text)
#define INTVIT_THREAD_INDEX() 0
#define INTVIT_THREAD_COUNT() 1
#endif

/* Blocking of the matmul kernel: KC values of the reduction per pass, JB columns of B
 * widened to int16 per block (stack use: 2 * (JB + 2) * KC bytes). */
#ifndef INTVIT_MATMUL_KC
#define INTVIT_MATMUL_KC 256
#endif
#ifndef INTVIT_MATMUL_JB
#define INTVIT_MATMUL_JB 16
#endif
/* A product is split over OpenMP threads only when it has at least INTVIT_OMP_MIN_MACS
 * multiply-adds (M * N * K; the network's batched products count all their heads): below
 * that, starting the threads and waiting for them costs more than they save (a 64-wide
 * ViT at batch 1 took longer on 2 threads than 8 images did). */
#ifndef INTVIT_OMP_MIN_MACS
#define INTVIT_OMP_MIN_MACS 1048576
#endif

/* Whether a product of macs multiply-adds starts a team of threads: at least
 * INTVIT_OMP_MIN_MACS, more than one thread set, and not inside an active team already (a
 * head of a batched product, whose heads the threads share). A product that does not split
 * runs without a parallel region at all: entering one, even one that its if clause keeps
 * to one thread, costs microseconds, as much as the product of a Swin window's head. */
static inline int32_t intvit_split_product(int64_t macs) {
#ifdef _OPENMP
    return macs >= INTVIT_OMP_MIN_MACS && !omp_in_parallel() && omp_get_max_threads() > 1;
#else
    (void)macs;
    return 0;
#endif
}

static inline int64_t intvit_floor_shift(int64_t v, int32_t k) {
    return v >= 0 ? v >> k : ~((~v) >> k);
}

static inline int64_t intvit_requant(int64_t v, int32_t m, int32_t e) {
    int64_t half = e > 0 ? ((int64_t)1 << (e - 1)) : 0;
    return intvit_floor_shift(v * m + half, e);
}

static inline int64_t intvit_clamp(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

static inline int64_t intvit_floor_div(int64_t v, int64_t d) {
    int64_t q = v / d;
    return (v % d != 0 && v < 0) ? q - 1 : q;
}

static inline int64_t intvit_round_div(int64_t v, int64_t d) {
    int64_t q = intvit_floor_div(v, d);
    return q + ((v - q * d) >= d - d / 2 ? 1 : 0);
}

/* The digit-by-digit square root: bit starts at the largest 4^k <= v (found by halving
 * shifts 32, 16, .., 2 of 4^31, then one more 2), then each step takes bit into root where
 * (root + bit) still fits the remainder x, with a mask instead of a branch (ge = all ones
 * when x >= root + bit). */
static inline int64_t intvit_isqrt(int64_t v) {
    uint64_t x = (uint64_t)v, root = 0, bit = (uint64_t)1 << 62;
    int32_t s;
    for (s = 32; s >= 2; s >>= 1)
        if ((bit >> s) > x) bit >>= s;
    if (bit > x) bit >>= 2;
    for (; bit != 0; bit >>= 2) {
        uint64_t trial = root + bit, ge = (uint64_t)0 - (uint64_t)(x >= trial);
        x -= trial & ge;
        root = (root >> 1) + (bit & ge);
    }
    return (int64_t)root;
}

/* Dot product of two int16 vectors (int32 result, proven in range by the caller):
 * compilers turn this loop into multiply-add instructions (x86 pmaddwd, Arm smlal). */
static inline int32_t intvit_dot16(const int16_t *x, const int16_t *y, int32_t n) {
    int32_t s = 0, k;
    for (k = 0; k < n; k++) s += x[k] * y[k];
    return s;
}

/* --- matmul ---------------------------------------------------------------------------
 * c[i][j] = bias[j] + sum_k a[i][k] * bt[j][k]   (bias may be NULL)
 * a: M x K, c: M x N int32; bt[j][k] = bt[j * sn + k * sk], B transposed read in place by
 * its strides: sn = K, sk = 1 for a linear layer's weight as stored (N x K), sn = 1,
 * sk = N for B itself as stored (K x N: an attention head's v).
 * Both kernels widen the operands to int16 (the plan proves every operand fits 16 bits)
 * and add exact int16 products in int32: every partial sum of c[i][j] is bounded by the
 * plan's proven bound of the whole sum (sum_k |a_ik| |b_jk| + |bias_j| <= 2^31 - 1), so no
 * order of the additions can wrap.
 *
 * Portable kernel (INTVIT_PORTABLE, or no AVX2): blocked over K (INTVIT_MATMUL_KC) and
 * over N (INTVIT_MATMUL_JB columns, widened to int16 once per block), 2 x 2 register
 * block inside.
 *
 * AVX2 kernel (every product where the compiler targets AVX2 and the 8-bit ones where
 * it has no VNNI): see "AVX2 kernel" below.
 */
#ifndef INTVIT_MATMUL_MC
#define INTVIT_MATMUL_MC 256
#endif

#define INTVIT_DECLARE_MATMUL(NAME, TA, TB)                                               \
    void NAME(int32_t M, int32_t N, int32_t K, const TA *a, const TB *bt, int32_t sn,     \
              int32_t sk, const int32_t *bias, int32_t *c)

/* Kernel selection, by the compiler's target macros (-march=native sets them for this
 * host), each capped by a define that forces the kernel below it:
 *   amx       __AMX_INT8__ (Linux x86-64), unless INTVIT_NO_AMX    8-bit products
 *   vnni      __AVX512VNNI__ and __AVX512BW__, unless INTVIT_NO_VNNI 8-bit products
 *   avx2      __AVX2__, unless INTVIT_PORTABLE                     every product
 *   portable  otherwise                                            every product
 * intvit_matmul8_kernel() names the kernel that the 8-bit products (INTVIT_DEFINE_MATMUL8:
 * both operands int8_t or uint8_t) run (amx falls back to vnni at run time where the OS
 * refuses the tiles); the wider ones (INTVIT_DEFINE_MATMUL) take the int16 kernel, avx2 or
 * portable (INTVIT_MATMUL_KERNEL). */
#if defined(__AVX2__) && !defined(INTVIT_PORTABLE)
#include <immintrin.h>
#define INTVIT_HAVE_AVX2 1
#endif
#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512BW__) \
    && !defined(INTVIT_NO_VNNI)
#define INTVIT_HAVE_VNNI 1
#endif
#if defined(INTVIT_HAVE_VNNI) && defined(__AMX_INT8__) && defined(__AMX_TILE__) \
    && defined(__linux__) && defined(__x86_64__) && !defined(INTVIT_NO_AMX)
#define INTVIT_HAVE_AMX 1
#endif

/* R(v; m, e) on the int64 lanes of AVX-512 vectors: v and m are the low (signed) 32 bits
 * of each lane, 0 <= e <= 62; v * m is exact in int64 (vpmuldq), 2^(e-1) is added and
 * the sum shifted right arithmetically by e (vpsravq: the floor, as floor_shift). The
 * plan bounds |v * m| + 2^(e-1) below 2^63. */
#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512F__)
static inline __m512i intvit_requant_v8(__m512i v, __m512i m, __m512i e) {
    __m512i half = _mm512_srli_epi64(_mm512_sllv_epi64(_mm512_set1_epi64(1), e), 1);
    return _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, m), half), e);
}

/* R(v; m, e) on 16 int32 lanes (m, e: int32 lanes, 0 <= e <= 62) as two vectors of int64
 * lanes, not clamped: *even holds lanes 0, 2, .., 14 (through intvit_requant_v8 as they
 * are), *odd lanes 1, 3, .., 15 (shifted down into the low halves first). */
static inline void intvit_requant_halves(__m512i v, __m512i m, __m512i e, __m512i *even,
                                         __m512i *odd) {
    __m512i even_e = _mm512_and_si512(e, _mm512_set1_epi64(0xFFFFFFFF));
    *even = intvit_requant_v8(v, m, even_e);
    *odd = intvit_requant_v8(_mm512_srli_epi64(v, 32), _mm512_srli_epi64(m, 32),
                             _mm512_srli_epi64(e, 32));
}

/* The 16 int32 lanes clamp(even, lo, hi), clamp(odd, lo, hi) interleaved (lane 2i from
 * even's int64 lane i, lane 2i + 1 from odd's; lo, hi: int64 lanes): each is clamped in
 * int64 before it is truncated, so no lane is cut before it is in [lo, hi]. */
static inline __m512i intvit_clamp_interleave(__m512i even, __m512i odd, __m512i lo,
                                              __m512i hi) {
    even = _mm512_min_epi64(_mm512_max_epi64(even, lo), hi);
    odd = _mm512_min_epi64(_mm512_max_epi64(odd, lo), hi);
    return _mm512_mask_blend_epi32((__mmask16)0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

/* clamp(R(v; m, e), lo, hi) on 16 int32 lanes (m, e: int32 lanes, 0 <= e <= 62; lo, hi:
 * int64 lanes). */
static inline __m512i intvit_requant_v16(__m512i v, __m512i m, __m512i e, __m512i lo,
                                         __m512i hi) {
    __m512i even, odd;
    intvit_requant_halves(v, m, e, &even, &odd);
    return intvit_clamp_interleave(even, odd, lo, hi);
}
#endif

#ifdef INTVIT_HAVE_AVX2
#define INTVIT_MATMUL_KERNEL "avx2"
/* the AVX2 kernel (INTVIT_DEFINE_MATMUL) follows the output layout of a fused product:
 * see "AVX2 kernel" below */
#else
#define INTVIT_MATMUL_KERNEL "portable"
#define INTVIT_DEFINE_MATMUL(NAME, TA, TB)                                                \
    INTVIT_DECLARE_MATMUL(NAME, TA, TB) {                                                 \
        int16_t b16[INTVIT_MATMUL_JB][INTVIT_MATMUL_KC];                                  \
        int16_t a16[2][INTVIT_MATMUL_KC];                                                 \
        int32_t i, j, k, k0, j0, kc, jb;                                                  \
        for (i = 0; i < M; i++)                                                           \
            for (j = 0; j < N; j++) c[(int64_t)i * N + j] = bias ? bias[j] : 0;           \
        for (k0 = 0; k0 < K; k0 += INTVIT_MATMUL_KC) {                                    \
            kc = K - k0 < INTVIT_MATMUL_KC ? K - k0 : INTVIT_MATMUL_KC;                   \
            for (j0 = 0; j0 < N; j0 += INTVIT_MATMUL_JB) {                                \
                jb = N - j0 < INTVIT_MATMUL_JB ? N - j0 : INTVIT_MATMUL_JB;               \
                for (j = 0; j < jb; j++)                                                  \
                    for (k = 0; k < kc; k++)                                              \
                        b16[j][k] = (int16_t)bt[(int64_t)(j0 + j) * sn + (int64_t)(k0 + k) * sk]; \
                for (i = 0; i + 1 < M; i += 2) {                                          \
                    int32_t *c0 = c + (int64_t)i * N + j0, *c1 = c0 + N;                  \
                    for (k = 0; k < kc; k++) {                                            \
                        a16[0][k] = (int16_t)a[(int64_t)i * K + k0 + k];                  \
                        a16[1][k] = (int16_t)a[(int64_t)(i + 1) * K + k0 + k];            \
                    }                                                                     \
                    for (j = 0; j + 1 < jb; j += 2) {                                     \
                        int32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;                       \
                        for (k = 0; k < kc; k++) {                                        \
                            s00 += a16[0][k] * b16[j][k];                                 \
                            s01 += a16[0][k] * b16[j + 1][k];                             \
                            s10 += a16[1][k] * b16[j][k];                                 \
                            s11 += a16[1][k] * b16[j + 1][k];                             \
                        }                                                                 \
                        c0[j] += s00; c0[j + 1] += s01; c1[j] += s10; c1[j + 1] += s11;   \
                    }                                                                     \
                    for (; j < jb; j++) {                                                 \
                        c0[j] += intvit_dot16(a16[0], b16[j], kc);                        \
                        c1[j] += intvit_dot16(a16[1], b16[j], kc);                        \
                    }                                                                     \
                }                                                                         \
                for (; i < M; i++) {                                                      \
                    for (k = 0; k < kc; k++) a16[0][k] = (int16_t)a[(int64_t)i * K + k0 + k]; \
                    for (j = 0; j < jb; j++)                                              \
                        c[(int64_t)i * N + j0 + j] += intvit_dot16(a16[0], b16[j], kc);   \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }
#endif

/* --- 8-bit products -------------------------------------------------------------------
 * INTVIT_DEFINE_MATMUL8(NAME, TA, TB): the matmul above for TA, TB in {int8_t, uint8_t}
 * (the plan chooses it when both operands fit 8 bits), with the same contract.
 *
 * VNNI kernel: _mm512_dpbusd_epi32(acc, x, y) adds to each int32 lane the four products
 * of unsigned bytes of x and signed bytes of y, exactly (vpdpbusd wraps, it is never the
 * saturating vpdpbusds; no sum here can reach 2^31). One parallel region per call; per K
 * block of INTVIT_VNNI_KC values and M block of INTVIT_MATMUL_MC rows, the threads split
 * the panels of 32 columns of bt, each packed as quads: panel[q][h][j][t] =
 * bt[16h + j][4q + t] (zero past the block and past N; see intvit_vnni_pack for the
 * strides). An 8 x 32 block of accumulators
 * takes, per quad q, a[i][4q..4q+3] broadcast, read in place from a (row stride K), against
 * panel[q][0 | 1]; where the block's length is not a multiple of 4 its last quad reads only
 * the block's bytes of a, the rest zero. The operand that is unsigned goes first; when both
 * have one sign, b is shifted by 128 into the other sign as it is packed, and the shift is
 * taken back out exactly by a row fix (a is never changed):
 *   u8 x s8:  sum a b                               (as is)
 *   s8 x u8:  sum b a                               (b first)
 *   s8 x s8:  sum (b + 128) a - 128 sum a           (b first; b ^ 0x80 is b + 128 as a byte)
 *   u8 x u8:  sum a (b - 128) + 128 sum a           (b ^ 0x80 is b - 128 as a byte)
 * Bound: a lane sums one K block, kc <= INTVIT_VNNI_KC values, each product at most
 * 255 * 128 in magnitude, so every partial sum of a lane is at most INTVIT_VNNI_KC * 255 *
 * 128 < 2^31 (checked below); so is the row fix, 128 |sum a| <= 128 * 255 * kc; the lane
 * plus the fix is the block's exact sum, which goes to c, whose partial sums the plan
 * bounds as for every kernel.
 */
#define INTVIT_DECLARE_MATMUL8 INTVIT_DECLARE_MATMUL

/* The requantization fused into a product (INTVIT_DEFINE_MATMUL8_RQ): y[i][j] =
 * clamp(R(c[i][j]; m[j], e[j]), lo, hi), m[0], e[0] for every column unless per_channel;
 * size: the bytes of one value of y (1, 2 or 4; y's type holds [lo, hi]). y's layout,
 * layout = {ldy, row_block, row_block_stride, block, block_stride, group, group_stride}:
 * value (i, j) lies at element
 *   (i / row_block) * row_block_stride + (i % row_block) * ldy                (intvit_y_row)
 *   + (j / group) * group_stride + (j % group / block) * block_stride + j % block
 *                                                                             (intvit_y_col)
 * of y (group a multiple of block), so that a product writes its output straight into the
 * layout that a transpose of it would make: row-major is {N, M, 0, N, 0, N, 0}; the
 * attention's context of one head into its columns of the merged heads {heads * N, M, 0,
 * N, 0, N, 0}; the q, k, v linear layer of a ViT into head-major q, k, v {d, M, 0, d,
 * M * d, N, 0} (d: the head size), of Swin's W windows of n tokens {d, n, heads * n * d,
 * d, n * d, heads * d, W * heads * n * d}. */
typedef struct {
    const int32_t *m;
    const int8_t *e;
    int32_t per_channel, lo, hi, size;
    void *y;
    int32_t ldy, row_block, row_block_stride, block, block_stride, group, group_stride;
} intvit_requant_into;

static inline int64_t intvit_y_row(const intvit_requant_into *rq, int64_t i) {
    return (i / rq->row_block) * rq->row_block_stride + (i % rq->row_block) * rq->ldy;
}

static inline int64_t intvit_y_col(const intvit_requant_into *rq, int32_t j) {
    return (int64_t)(j / rq->group) * rq->group_stride
           + (int64_t)(j % rq->group / rq->block) * rq->block_stride + j % rq->block;
}

/* intvit_requant_into's y from a whole c (M x N), row by row. */
static inline void intvit_requant_rows(int32_t M, int32_t N, const int32_t *c,
                                       const intvit_requant_into *rq) {
    int64_t i;
    int32_t j;
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            int32_t at = rq->per_channel ? j : 0;
            int64_t v = intvit_clamp(intvit_requant(c[i * N + j], rq->m[at], rq->e[at]),
                                     rq->lo, rq->hi), to = intvit_y_row(rq, i) + intvit_y_col(rq, j);
            if (rq->size == 1) ((uint8_t *)rq->y)[to] = (uint8_t)v;
            else if (rq->size == 2) ((uint16_t *)rq->y)[to] = (uint16_t)v;
            else ((uint32_t *)rq->y)[to] = (uint32_t)v;
        }
}
#ifdef INTVIT_HAVE_AVX2
/* --- AVX2 kernel ----------------------------------------------------------------------
 * c = bias + a bt^T exactly as every kernel (see "matmul" above), and with out (a fused
 * product, INTVIT_DEFINE_MATMUL8_RQ without VNNI) y = clamp(R(c; m, e), lo, hi) in out's
 * layout straight from the accumulators. vpmaddwd (_mm256_madd_epi16) adds two exact
 * int16 products into each int32 lane (it is never the saturating _mm256_maddubs_epi16,
 * whose u8 x s8 pairs would pass int16): it is the exact product with the most
 * multiply-adds per instruction that AVX2 has (on a Zen 3 core two vpmaddwd a cycle,
 * like two FMAs of float32).
 *
 * One parallel region a call. Per K block of INTVIT_AVX2_KC values and M block of
 * INTVIT_AVX2_MC rows: the threads widen the rows of a to int16 (zero-padded to an even
 * length) into a16, shared; then they split the panels of 16 columns of bt, each packed
 * as pairs, panel[p][j][t] = bt[j][2p + t] (zero past the block and past N), and an
 * INTVIT_AVX2_ROWS x 16 block of int32 accumulators takes, per pair p,
 * a16[i][2p..2p+1] broadcast against panel[p][0..7 | 8..15]. The first K block starts
 * from the bias (or 0), the others from c; the last one of a fused product writes y, not
 * c (c then holds only the earlier blocks' partial sums).
 *
 * R on AVX2: the int64 products v * m by vpmuldq on the even and the odd lanes, + 2^(e-1),
 * then floor(x / 2^e) as ~(~x >> e) on the negative lanes (x ^ s, a logical vpsrlvq,
 * ^ s with s the lane's sign: AVX2 has no 64-bit arithmetic shift), clamped in int64 by
 * compares and blends before the low halves are kept, and stored narrowed to their low
 * bytes or halves (intvit_store8_<T>). */
/* Rows of a register block (two accumulators a row): 4 against 3 on deit_small batch 1,
 * 2 threads, 2 x 4 alternated profiles, least: products 90.4 against 105.1 ms (2 rows
 * 98.4, 6 rows 104.5 in one round). */
#ifndef INTVIT_AVX2_ROWS
#define INTVIT_AVX2_ROWS 4
#endif
/* K and M blocks: a K block of 512 holds the 384 of a DeiT-S linear layer whole, so that
 * its c is never written and read back between blocks (deit_small on 2 threads: products
 * 104 -> 91-95 ms against blocks of 256 x 256); stack: 2 (MC + 16) (KC + 1) bytes. */
#ifndef INTVIT_AVX2_KC
#define INTVIT_AVX2_KC 512
#endif
#ifndef INTVIT_AVX2_MC
#define INTVIT_AVX2_MC 128
#endif
#if INTVIT_AVX2_ROWS < 1 || INTVIT_AVX2_ROWS > 6
#error "INTVIT_AVX2_ROWS must be in [1, 6] (two accumulators a row in 16 registers)"
#endif

/* floor((x + 2^(e-1)) / 2^e) of the int64 lanes x (0 <= e <= 62). */
static inline __m256i intvit_avx2_round_shift(__m256i x, __m256i e) {
    __m256i half = _mm256_srli_epi64(_mm256_sllv_epi64(_mm256_set1_epi64x(1), e), 1), s;
    x = _mm256_add_epi64(x, half);
    s = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
    return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(x, s), e), s);
}

/* R(v; m, e) of 8 int32 lanes (m, e: int32 lanes, 0 <= e <= 62) as two vectors of int64
 * lanes, not clamped: *even holds lanes 0, 2, 4, 6, *odd lanes 1, 3, 5, 7. */
static inline void intvit_avx2_requant_halves(__m256i v, __m256i m, __m256i e, __m256i *even,
                                              __m256i *odd) {
    *even = intvit_avx2_round_shift(_mm256_mul_epi32(v, m),
                                    _mm256_and_si256(e, _mm256_set1_epi64x(0xFFFFFFFF)));
    *odd = intvit_avx2_round_shift(
        _mm256_mul_epi32(_mm256_srli_epi64(v, 32), _mm256_srli_epi64(m, 32)),
        _mm256_srli_epi64(e, 32));
}

/* The 8 int32 lanes clamp(even, lo, hi), clamp(odd, lo, hi) interleaved (lo, hi: int64
 * lanes), each clamped in int64 before it is truncated. */
static inline __m256i intvit_avx2_clamp_interleave(__m256i even, __m256i odd, __m256i lo,
                                                   __m256i hi) {
    even = _mm256_blendv_epi8(even, lo, _mm256_cmpgt_epi64(lo, even));
    even = _mm256_blendv_epi8(even, hi, _mm256_cmpgt_epi64(even, hi));
    odd = _mm256_blendv_epi8(odd, lo, _mm256_cmpgt_epi64(lo, odd));
    odd = _mm256_blendv_epi8(odd, hi, _mm256_cmpgt_epi64(odd, hi));
    return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* clamp(R(v; m, e), lo, hi) on 8 int32 lanes (m, e: int32 lanes; lo, hi: int64 lanes). */
static inline __m256i intvit_avx2_requant8(__m256i v, __m256i m, __m256i e, __m256i lo,
                                           __m256i hi) {
    __m256i even, odd;
    intvit_avx2_requant_halves(v, m, e, &even, &odd);
    return intvit_avx2_clamp_interleave(even, odd, lo, hi);
}

/* The sum of the 8 int32 (or 4 int64) lanes of v, in int64. */
static inline int64_t intvit_avx2_sum32(__m256i v) {
    int32_t lane[8], i;
    int64_t sum = 0;
    _mm256_storeu_si256((__m256i *)lane, v);
    for (i = 0; i < 8; i++) sum += lane[i];
    return sum;
}
static inline int64_t intvit_avx2_sum64(__m256i v) {
    int64_t lane[4];
    _mm256_storeu_si256((__m256i *)lane, v);
    return lane[0] + lane[1] + lane[2] + lane[3];
}

/* x[0..8) widened to int32 lanes, one loader per element type. */
static inline __m256i intvit_widen8_int8_t(const int8_t *x) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)x));
}
static inline __m256i intvit_widen8_uint8_t(const uint8_t *x) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)x));
}
static inline __m256i intvit_widen8_int16_t(const int16_t *x) {
    return _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)x));
}
static inline __m256i intvit_widen8_int32_t(const int32_t *x) {
    return _mm256_loadu_si256((const __m256i *)x);
}

/* The low bytes (or halves) of the 8 int32 lanes of v, gathered in each 128-bit lane by
 * a byte shuffle and the two lanes' results joined. */
static inline __m256i intvit_avx2_low_parts(__m256i v, int32_t bytes) {
    const __m256i low8 = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, -1, -1, -1);
    const __m256i low16 = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1,
                                           -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1,
                                           -1, -1, -1, -1, -1);
    return bytes == 1
               ? _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, low8),
                                             _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1))
               : _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, low16), 0x08);
}

/* y[0..8) = the 8 int32 lanes of v, each already in the range of y's type. */
static inline void intvit_store8_int8_t(int8_t *y, __m256i v) {
    _mm_storel_epi64((__m128i *)y, _mm256_castsi256_si128(intvit_avx2_low_parts(v, 1)));
}
static inline void intvit_store8_uint8_t(uint8_t *y, __m256i v) {
    _mm_storel_epi64((__m128i *)y, _mm256_castsi256_si128(intvit_avx2_low_parts(v, 1)));
}
static inline void intvit_store8_int16_t(int16_t *y, __m256i v) {
    _mm_storeu_si128((__m128i *)y, _mm256_castsi256_si128(intvit_avx2_low_parts(v, 2)));
}
static inline void intvit_store8_int32_t(int32_t *y, __m256i v) {
    _mm256_storeu_si256((__m256i *)y, v);
}

/* The lanes of columns 8h .. 8h + 7 of a panel whose first cols columns are valid, as
 * the masks of vpmaskmovd (all ones where valid). */
static inline __m256i intvit_avx2_half_mask(int32_t cols, int32_t h) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8 * h),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The 8 int32 values at p of which the first n (as in intvit_avx2_half_mask) are valid:
 * a plain load or store where all 8 are, masked loads and lane-by-lane stores otherwise
 * (vpmaskmovd stores are microcoded and slow on AMD cores). */
static inline __m256i intvit_avx2_load_part(const int32_t *p, int32_t n, __m256i valid) {
    return n >= 8 ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskload_epi32(p, valid);
}
static inline void intvit_avx2_store_part(int32_t *p, int32_t n, __m256i v) {
    int32_t lanes[8], j;
    if (n >= 8) {
        _mm256_storeu_si256((__m256i *)p, v);
        return;
    }
    _mm256_storeu_si256((__m256i *)lanes, v);
    for (j = 0; j < n && j < 8; j++) p[j] = lanes[j];
}

/* A fused product's panel of 16 columns: their multipliers and exponents, the clamp
 * bounds as int64 lanes, y, its bytes per value, the layout, and the element offset of
 * the panel's first column in a row. */
typedef struct {
    __m256i m[2], e[2], lo, hi;
    void *y;
    int32_t size;
    const intvit_requant_into *rq;
    int64_t col;
} intvit_avx2_out;

static inline void intvit_avx2_out_panel(const intvit_requant_into *rq, int32_t j0,
                                         int32_t jb, intvit_avx2_out *out) {
    int32_t m[16], e[16], j, h;
    for (j = 0; j < 16; j++) {
        int32_t at = rq->per_channel ? j0 + j : 0;
        m[j] = j < jb ? rq->m[at] : 0;
        e[j] = j < jb ? rq->e[at] : 0;
    }
    for (h = 0; h < 2; h++) {
        out->m[h] = _mm256_loadu_si256((const __m256i *)(m + 8 * h));
        out->e[h] = _mm256_loadu_si256((const __m256i *)(e + 8 * h));
    }
    out->lo = _mm256_set1_epi64x(rq->lo);
    out->hi = _mm256_set1_epi64x(rq->hi);
    out->y = rq->y;
    out->size = rq->size;
    out->rq = rq;
    out->col = intvit_y_col(rq, j0);
}

/* y[at .. at + cols - 1] = clamp(R(sum; m, e), lo, hi) of one row of a panel (columns
 * 0-7 in sum0, 8-15 in sum1), the lanes' low parts stored (the clamp put them in y's
 * range); a row of fewer than 16 columns goes through a buffer, so that nothing past it
 * is written. */
static inline void intvit_avx2_store(const intvit_avx2_out *out, int32_t cols, int64_t at,
                                     __m256i sum0, __m256i sum1) {
    __m256i y0 = intvit_avx2_requant8(sum0, out->m[0], out->e[0], out->lo, out->hi);
    __m256i y1 = intvit_avx2_requant8(sum1, out->m[1], out->e[1], out->lo, out->hi);
    uint8_t *to = (uint8_t *)out->y + at * out->size, buf[64];
    uint8_t *dst = cols == 16 ? to : buf;
    if (out->size == 4) {
        intvit_store8_int32_t((int32_t *)dst, y0);
        intvit_store8_int32_t((int32_t *)dst + 8, y1);
    } else if (out->size == 2) {
        intvit_store8_int16_t((int16_t *)dst, y0);
        intvit_store8_int16_t((int16_t *)dst + 8, y1);
    } else {
        intvit_store8_uint8_t(dst, y0);
        intvit_store8_uint8_t(dst + 8, y1);
    }
    if (cols < 16) memcpy(to, buf, (size_t)cols * (size_t)out->size);
}

/* c[i + r][j] = start[r][j] + sum_{p < pairs} a16[r][2p..2p+1] . panel[p][j] for
 * r < rows (<= INTVIT_AVX2_ROWS), j < cols (<= 16), start the bias (0 where NULL) when
 * first, else c; with out, y (row i + r of the matrix where the layout puts it) instead
 * of c. */
static inline void intvit_avx2_block(int32_t rows, int32_t cols, int32_t pairs,
                                     const int16_t *a16, int32_t lda, const int16_t *panel,
                                     int32_t first, const int32_t *bias, int32_t *c,
                                     int32_t ldc, const intvit_avx2_out *out, int32_t i) {
    __m256i acc[INTVIT_AVX2_ROWS][2], valid[2];
    const int16_t *ar[INTVIT_AVX2_ROWS];
    int32_t p, r, h, blk, in_blk;
    for (r = 0; r < INTVIT_AVX2_ROWS; r++) {
        ar[r] = a16 + (int64_t)(r < rows ? r : 0) * lda;
        acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    }
    for (p = 0; p < pairs; p++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(panel + 32 * p));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(panel + 32 * p + 16));
        for (r = 0; r < INTVIT_AVX2_ROWS; r++) {
            int32_t w;
            __m256i x;
            memcpy(&w, ar[r] + 2 * p, 4);
            x = _mm256_set1_epi32(w);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(x, b0));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(x, b1));
        }
    }
    valid[0] = intvit_avx2_half_mask(cols, 0);
    valid[1] = intvit_avx2_half_mask(cols, 1);
    blk = out ? i / out->rq->row_block : 0;
    in_blk = out ? i % out->rq->row_block : 0;
    for (r = 0; r < rows; r++) {
        int32_t *cr = c + (int64_t)r * ldc;
        const int32_t *from = first ? bias : cr;
        __m256i sum[2];
        for (h = 0; h < 2; h++) {
            __m256i start = from ? intvit_avx2_load_part(from + 8 * h, cols - 8 * h, valid[h])
                                 : _mm256_setzero_si256();
            sum[h] = _mm256_add_epi32(start, acc[r][h]);
            if (!out) intvit_avx2_store_part(cr + 8 * h, cols - 8 * h, sum[h]);
        }
        if (out) {
            intvit_avx2_store(out, cols, (int64_t)blk * out->rq->row_block_stride
                              + (int64_t)in_blk * out->rq->ldy + out->col, sum[0], sum[1]);
            if (++in_blk == out->rq->row_block) {
                in_blk = 0;
                blk++;
            }
        }
    }
}

/* Bytes widened to 16 int16 lanes (as int8_t where is_signed). */
static inline __m256i intvit_avx2_widen16(__m128i v, int32_t is_signed) {
    return is_signed ? _mm256_cvtepi8_epi16(v) : _mm256_cvtepu8_epi16(v);
}

/* The pairs 0 .. 8 * (kc / 16) - 1 of the panel's columns 8g .. 8g + 7 for each group g
 * of 8 whole columns, from bt as bytes with sk = 1 (a weight, or the k that the scores
 * read): 16 bytes of each column widened to 8 pairs (int32 lanes), and the 8 x 8 block of
 * pairs transposed (unpacks of 32 and 64 bits, then 128-bit halves) into 8 rows of the
 * panel. Returns the values of k it packed. */
static inline int32_t intvit_avx2_pack_columns(const uint8_t *base, int32_t is_signed,
                                               int32_t sn, int32_t jb, int32_t kc,
                                               int16_t *panel) {
    int32_t g, k, j;
    for (g = 0; g < jb / 8; g++)
        for (k = 0; k + 16 <= kc; k += 16) {
            __m256i r[8], t[8], u[8];
            for (j = 0; j < 8; j++)
                r[j] = intvit_avx2_widen16(
                    _mm_loadu_si128((const __m128i *)(base + (int64_t)(8 * g + j) * sn + k)),
                    is_signed);
            for (j = 0; j < 8; j += 2) {
                t[j] = _mm256_unpacklo_epi32(r[j], r[j + 1]);
                t[j + 1] = _mm256_unpackhi_epi32(r[j], r[j + 1]);
            }
            for (j = 0; j < 8; j += 4) {
                u[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);
                u[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);
                u[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]);
                u[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]);
            }
            for (j = 0; j < 4; j++) {
                _mm256_storeu_si256((__m256i *)(panel + (k / 2 + j) * 32 + 16 * g),
                                    _mm256_permute2x128_si256(u[j], u[j + 4], 0x20));
                _mm256_storeu_si256((__m256i *)(panel + (k / 2 + j + 4) * 32 + 16 * g),
                                    _mm256_permute2x128_si256(u[j], u[j + 4], 0x31));
            }
        }
    return jb >= 8 ? kc / 16 * 16 : 0;
}

/* The pairs 0 .. kc / 2 - 1 of a whole panel (16 columns) from B as rows of bytes (sn = 1,
 * row stride sk: an attention head's v): rows 2p and 2p + 1 widened and interleaved into
 * pairs by 16-bit unpacks (columns 0-3 and 8-11, 4-7 and 12-15), then halves reordered.
 * Returns the values of k it packed. */
static inline int32_t intvit_avx2_pack_rows(const uint8_t *base, int32_t is_signed,
                                            int32_t sk, int32_t kc, int16_t *panel) {
    int32_t p;
    for (p = 0; p < kc / 2; p++) {
        __m256i r0 = intvit_avx2_widen16(
            _mm_loadu_si128((const __m128i *)(base + (int64_t)2 * p * sk)), is_signed);
        __m256i r1 = intvit_avx2_widen16(
            _mm_loadu_si128((const __m128i *)(base + (int64_t)(2 * p + 1) * sk)), is_signed);
        __m256i lo = _mm256_unpacklo_epi16(r0, r1), hi = _mm256_unpackhi_epi16(r0, r1);
        _mm256_storeu_si256((__m256i *)(panel + 32 * p), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256((__m256i *)(panel + 32 * p + 16),
                            _mm256_permute2x128_si256(lo, hi, 0x31));
    }
    return kc / 2 * 2;
}

/* An instance's typed copies (INTVIT_AVX2_COPIES): n values of a from element at as
 * int16; the panel of jb (<= 16) columns of bt from element at (strides sn, sk) over kc
 * values, as pairs, zero past kc and jb: bytes in vectors where a whole block of them
 * allows (intvit_avx2_pack_columns, intvit_avx2_pack_rows), the rest value by value. */
typedef void (*intvit_avx2_widen_fn)(const void *a, int64_t at, int32_t n, int16_t *to);
typedef void (*intvit_avx2_pack_fn)(const void *bt, int64_t at, int32_t sn, int32_t sk,
                                    int32_t jb, int32_t kc, int16_t *panel);

#define INTVIT_AVX2_COPIES(NAME, TA, TB)                                                  \
    static void NAME##_widen(const void *a, int64_t at, int32_t n, int16_t *to) {         \
        const TA *from = (const TA *)a + at;                                              \
        int32_t k;                                                                        \
        for (k = 0; k < n; k++) to[k] = (int16_t)from[k];                                 \
    }                                                                                     \
    static void NAME##_pack(const void *bt, int64_t at, int32_t sn, int32_t sk,           \
                            int32_t jb, int32_t kc, int16_t *panel) {                     \
        const TB *base = (const TB *)bt + at;                                             \
        int32_t j, k, done = 0, whole = 0;                                                \
        if (jb < 16 || (kc & 1)) memset(panel, 0, (size_t)(kc + 1) / 2 * 64);             \
        if (sizeof(TB) == 1 && sk == 1) {                                                 \
            done = intvit_avx2_pack_columns((const uint8_t *)base, (TB)-1 < 0, sn, jb, kc, \
                                            panel);                                       \
            whole = jb / 8 * 8;                                                           \
        } else if (sizeof(TB) == 1 && sn == 1 && jb == 16) {                              \
            done = intvit_avx2_pack_rows((const uint8_t *)base, (TB)-1 < 0, sk, kc, panel); \
            whole = 16;                                                                   \
        }                                                                                 \
        for (j = 0; j < jb; j++) {                                                        \
            const TB *col = base + (int64_t)j * sn;                                       \
            int16_t *pj = panel + (j & 7) * 2 + (j >> 3) * 16;                            \
            for (k = j < whole ? done : 0; k < kc; k++)                                   \
                pj[(k >> 1) * 32 + (k & 1)] = (int16_t)col[(int64_t)k * sk];              \
        }                                                                                 \
    }

/* Whether each panel of 16 columns of an N-column product lies in one block of y's
 * layout (a panel's row is one contiguous store), as the epilogue needs; else the product
 * is computed into c and requantized by intvit_requant_rows. */
static inline int32_t intvit_avx2_panels_whole(const intvit_requant_into *rq, int32_t N) {
    return rq->block >= N || rq->block % 16 == 0;
}

/* The blocks of intvit_avx2_matmul, by thread t of a team of nt (t = 0, nt = 1: outside
 * a parallel region): its share of a16's rows and of the panels, static contiguous
 * shares, with barriers (only where nt > 1) that keep a16's rows whole. No worksharing
 * construct here: called by a thread that shares a batched product's heads, one would bind
 * to that thread's team and split the head's loop with threads busy with other heads. */
static inline void intvit_avx2_matmul_blocks(int32_t M, int32_t N, int32_t K, const void *a,
                                             intvit_avx2_widen_fn widen, const void *bt,
                                             int32_t sn, int32_t sk, intvit_avx2_pack_fn pack,
                                             const int32_t *bias, int32_t *c,
                                             const intvit_requant_into *rq, int16_t *a16,
                                             int32_t t, int32_t nt) {
    int16_t panel[(INTVIT_AVX2_KC + 1) / 2 * 32];
    int32_t i, k0, i0, p, kc, mc, pairs, last, panels = (N + 15) / 16;
    for (k0 = 0; k0 == 0 || k0 < K; k0 += INTVIT_AVX2_KC) {   /* K = 0: c = bias */
        kc = K - k0 < INTVIT_AVX2_KC ? K - k0 : INTVIT_AVX2_KC;
        pairs = (kc + 1) / 2;
        last = rq != NULL && k0 + kc >= K;
        for (i0 = 0; i0 < M; i0 += INTVIT_AVX2_MC) {
            mc = M - i0 < INTVIT_AVX2_MC ? M - i0 : INTVIT_AVX2_MC;
            for (i = t * mc / nt; i < (t + 1) * mc / nt; i++) {
                widen(a, (int64_t)(i0 + i) * K + k0, kc, a16 + (int64_t)i * 2 * pairs);
                if (kc & 1) a16[(int64_t)i * 2 * pairs + kc] = 0;
            }
            if (nt > 1) {
                INTVIT_OMP("omp barrier")
            }
            for (p = t * panels / nt; p < (t + 1) * panels / nt; p++) {
                int32_t j0 = 16 * p, jb = N - j0 < 16 ? N - j0 : 16, r;
                intvit_avx2_out out;
                pack(bt, (int64_t)j0 * sn + (int64_t)k0 * sk, sn, sk, jb, kc, panel);
                if (last) intvit_avx2_out_panel(rq, j0, jb, &out);
                for (r = 0; r < mc; r += INTVIT_AVX2_ROWS)
                    intvit_avx2_block(mc - r < INTVIT_AVX2_ROWS ? mc - r : INTVIT_AVX2_ROWS,
                                      jb, pairs, a16 + (int64_t)r * 2 * pairs, 2 * pairs,
                                      panel, k0 == 0, bias ? bias + j0 : NULL,
                                      c + (int64_t)(i0 + r) * N + j0, N,
                                      last ? &out : NULL, i0 + r);
            }
            if (nt > 1) {
                INTVIT_OMP("omp barrier")
            }
        }
    }
}

static inline void intvit_avx2_matmul(int32_t M, int32_t N, int32_t K, const void *a,
                                      intvit_avx2_widen_fn widen, const void *bt,
                                      int32_t sn, int32_t sk, intvit_avx2_pack_fn pack,
                                      const int32_t *bias, int32_t *c,
                                      const intvit_requant_into *rq) {
    int16_t a16[INTVIT_AVX2_MC * (INTVIT_AVX2_KC + 1)];
    const intvit_requant_into *after = NULL;
    if (rq != NULL && !intvit_avx2_panels_whole(rq, N)) {
        after = rq;
        rq = NULL;
    }
    if (intvit_split_product((int64_t)M * N * K)) {
        INTVIT_OMP("omp parallel")
        intvit_avx2_matmul_blocks(M, N, K, a, widen, bt, sn, sk, pack, bias, c, rq, a16,
                                  INTVIT_THREAD_INDEX(), INTVIT_THREAD_COUNT());
    } else {
        intvit_avx2_matmul_blocks(M, N, K, a, widen, bt, sn, sk, pack, bias, c, rq, a16, 0, 1);
    }
    if (after != NULL) intvit_requant_rows(M, N, c, after);
}

#define INTVIT_DEFINE_MATMUL(NAME, TA, TB)                                                \
    INTVIT_AVX2_COPIES(NAME, TA, TB)                                                      \
    INTVIT_DECLARE_MATMUL(NAME, TA, TB) {                                                 \
        intvit_avx2_matmul(M, N, K, a, NAME##_widen, bt, sn, sk, NAME##_pack, bias, c,     \
                           NULL);                                                         \
    }
#endif

#define INTVIT_SIGNED(T) INTVIT_SIGNED_##T
#define INTVIT_SIGNED_int8_t 1
#define INTVIT_SIGNED_uint8_t 0

#ifdef INTVIT_HAVE_VNNI
#ifndef INTVIT_VNNI_KC
#define INTVIT_VNNI_KC 512
#endif
#if INTVIT_VNNI_KC % 4 != 0 || INTVIT_VNNI_KC < 4 || INTVIT_VNNI_KC > 65792
#error "INTVIT_VNNI_KC must be a multiple of 4 in [4, 65792] (KC * 255 * 128 < 2^31)"
#endif

/* Where a product's last K block goes when its requantization is fused into it (the
 * network's y = clamp(R(c; m, e), lo, hi) of the product's c): the 32 columns' multipliers
 * and exponents of one panel as int32 lanes, the clamp bounds as int64 lanes, the output
 * (bytes per value: 1, 2 or 4), its layout, and the element offset of the panel's first
 * column in a row. */
typedef struct {
    __m512i m[2], e[2], lo, hi;
    void *y;
    int32_t size;
    const intvit_requant_into *rq;
    int64_t col;
} intvit_vnni_out;

/* The lanes of columns 16h .. 16h + 15 of a panel whose first cols columns are valid. */
static inline __mmask16 intvit_half_mask(int32_t cols, int32_t h) {
    int32_t n = cols - 16 * h;
    return (__mmask16)(n >= 16 ? 0xFFFF : n > 0 ? (1u << n) - 1 : 0);
}

/* y[at .. at + cols - 1] = clamp(R(sum; m, e), lo, hi) of one row of a panel (its columns
 * 0-15 in sum0, 16-31 in sum1). The two halves are narrowed in registers and stored as one
 * row (a masked store only where cols < 32): a transpose or LayerNorm that reads the row
 * next finds it whole, where 16-value masked narrowing stores to memory made its loads
 * wait (Swin-T's transposes took twice as long after them). */
static inline void intvit_vnni_store(const intvit_vnni_out *out, int32_t cols, int64_t at,
                                     __m512i sum0, __m512i sum1) {
    __m512i y0 = intvit_requant_v16(sum0, out->m[0], out->e[0], out->lo, out->hi);
    __m512i y1 = intvit_requant_v16(sum1, out->m[1], out->e[1], out->lo, out->hi);
    uint8_t *to = (uint8_t *)out->y + at * out->size;
    if (out->size == 1) {
        __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(y0)),
                                            _mm512_cvtepi32_epi8(y1), 1);
        if (cols == 32) _mm256_storeu_si256((__m256i *)to, v);
        else _mm512_mask_storeu_epi8(to, ((__mmask64)1 << cols) - 1, _mm512_castsi256_si512(v));
    } else if (out->size == 2) {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(y0)),
                                       _mm512_cvtepi32_epi16(y1), 1);
        if (cols == 32) _mm512_storeu_si512(to, v);
        else _mm512_mask_storeu_epi16(to, (__mmask32)((1u << cols) - 1), v);
    } else {
        _mm512_mask_storeu_epi32(to, intvit_half_mask(cols, 0), y0);
        _mm512_mask_storeu_epi32(to + 64, intvit_half_mask(cols, 1), y1);
    }
}

/* c[r][j] = start[r][j] + sum_{k < kc} a[r][k] . panel[k][j] + row_fix[r] for r < rows
 * (<= 8), j < cols (<= 32), where start is c itself, or with first (the first K block)
 * bias[j] (0 when bias is NULL): c needs no pass of its own to start from the bias; swap:
 * the panel is the unsigned operand. a's rows are read in place (stride lda) as
 * (kc + 3) / 4 whole quads: the bytes past kc that a last partial quad takes (the next
 * bytes of a) meet the panel's zeros, so they add nothing; where the block holds the
 * matrix's last row (end_row not NULL), that row, whose bytes past kc may lie past a, is
 * read from end_row instead (its kc bytes, zero-padded). With out (the last K block of a
 * fused product) the sums are not stored in c but requantized into out->y, row r of the
 * block (row i + r of the matrix) where the layout puts it (values clamped into the
 * output type's range, so the narrowing stores are exact). */
static inline void intvit_vnni_block(int32_t rows, int32_t cols, int32_t quads,
                                     const uint8_t *a, int32_t lda, const uint8_t *end_row,
                                     const uint8_t *panel, int32_t swap,
                                     const int32_t *row_fix, int32_t first,
                                     const int32_t *bias, int32_t *c, int32_t ldc,
                                     const intvit_vnni_out *out, int32_t i) {
    __m512i acc[8][2];
    const uint8_t *ar[8];
    __mmask16 valid[2];
    int32_t q, r, h, blk, in_blk;
    valid[0] = intvit_half_mask(cols, 0);
    valid[1] = intvit_half_mask(cols, 1);
    for (r = 0; r < 8; r++) {
        ar[r] = r >= rows ? ar[0] : r == rows - 1 && end_row ? end_row : a + (int64_t)r * lda;
        acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    }
    for (q = 0; q < quads; q++) {
        __m512i b0 = _mm512_loadu_si512(panel + 128 * q);
        __m512i b1 = _mm512_loadu_si512(panel + 128 * q + 64);
        for (r = 0; r < 8; r++) {
            int32_t w;
            __m512i x;
            memcpy(&w, ar[r] + 4 * q, 4);
            x = _mm512_set1_epi32(w);
            if (swap) {
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], b0, x);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], b1, x);
            } else {
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], x, b0);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], x, b1);
            }
        }
    }
    /* row i + r of the layout: its row block and row in it, from one division a block */
    blk = out ? i / out->rq->row_block : 0;
    in_blk = out ? i % out->rq->row_block : 0;
    for (r = 0; r < rows; r++) {
        int32_t *cr = c + (int64_t)r * ldc;
        const int32_t *from = first ? bias : cr;
        __m512i fix = _mm512_set1_epi32(row_fix[r]), sum[2];
        for (h = 0; h < 2; h++) {
            __m512i start = from ? _mm512_maskz_loadu_epi32(valid[h], from + 16 * h)
                                 : _mm512_setzero_si512();
            sum[h] = _mm512_add_epi32(start, _mm512_add_epi32(acc[r][h], fix));
            if (!out) _mm512_mask_storeu_epi32(cr + 16 * h, valid[h], sum[h]);
        }
        if (out) {
            intvit_vnni_store(out, cols, (int64_t)blk * out->rq->row_block_stride
                              + (int64_t)in_blk * out->rq->ldy + out->col, sum[0], sum[1]);
            if (++in_blk == out->rq->row_block) {
                in_blk = 0;
                blk++;
            }
        }
    }
}

/* Quad q of one half panel (cols <= 16 columns from base, bt's strides sn, sk) copied
 * byte by byte: pq[4j + t] = bt[j][4q + t] ^ xb for 4q + t < kc, zero elsewhere. */
static inline void intvit_vnni_pack_quad(const uint8_t *base, int32_t sn, int32_t sk,
                                         int32_t cols, int32_t q, int32_t kc, uint8_t xb,
                                         uint8_t *pq) {
    int32_t j, k;
    memset(pq, 0, 64);
    for (j = 0; j < cols; j++)
        for (k = 4 * q; k < kc && k < 4 * q + 4; k++)
            pq[4 * j + k - 4 * q] = (uint8_t)(base[(int64_t)j * sn + (int64_t)k * sk] ^ xb);
}

/* Quad q of one half panel of B stored as rows (sn = 1, row stride sk): the 16 column
 * bytes of rows 4q .. 4q + 3 (masked loads: no byte past the cols columns is read; rows
 * past kc are zero), interleaved into quads by unpacking bytes (pairs of rows) and then
 * 16-bit words (pairs of pairs): [r0 r1 r2 r3] per column. */
static inline void intvit_vnni_pack_rows_quad(const uint8_t *base, int32_t sk, int32_t cols,
                                              int32_t q, int32_t kc, __m512i flip,
                                              uint8_t *pq) {
    __mmask64 valid = cols >= 16 ? (__mmask64)0xFFFF : ((__mmask64)1 << cols) - 1;
    __m128i r[4], lo01, hi01, lo23, hi23;
    int32_t t;
    for (t = 0; t < 4; t++) {
        int32_t k = 4 * q + t;
        r[t] = k < kc ? _mm512_castsi512_si128(_mm512_maskz_mov_epi8(
                            valid, _mm512_xor_si512(
                                _mm512_maskz_loadu_epi8(valid, base + (int64_t)k * sk), flip)))
                      : _mm_setzero_si128();
    }
    lo01 = _mm_unpacklo_epi8(r[0], r[1]);
    hi01 = _mm_unpackhi_epi8(r[0], r[1]);
    lo23 = _mm_unpacklo_epi8(r[2], r[3]);
    hi23 = _mm_unpackhi_epi8(r[2], r[3]);
    _mm_storeu_si128((__m128i *)pq, _mm_unpacklo_epi16(lo01, lo23));
    _mm_storeu_si128((__m128i *)(pq + 16), _mm_unpackhi_epi16(lo01, lo23));
    _mm_storeu_si128((__m128i *)(pq + 32), _mm_unpacklo_epi16(hi01, hi23));
    _mm_storeu_si128((__m128i *)(pq + 48), _mm_unpackhi_epi16(hi01, hi23));
}

/* The panel of columns j0 .. j0 + jb - 1 (jb <= 32) of bt over k0 .. k0 + kc - 1 (bt: the
 * panel's first value, strides sn, sk), as quads xor xb (panel[q][h][j][t] =
 * bt[j0 + 16h + j][k0 + 4q + t] ^ xb, zero past kc and jb). Rows of bt (sk = 1: a
 * weight): a whole quad of 16 columns is one gather of 16 32-bit words (vpgatherdd,
 * column j's word at j * sn bytes), the last quad when kc is not a multiple of 4 copied
 * byte by byte; B as rows (sn = 1: an attention head's v) by intvit_vnni_pack_rows_quad;
 * other strides byte by byte. */
static inline void intvit_vnni_pack(const uint8_t *bt, int32_t sn, int32_t sk, int32_t jb,
                                    int32_t kc, uint8_t xb, uint8_t *panel) {
    const __m512i flip = _mm512_set1_epi8((char)xb);
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(sn));
    int32_t whole = sk == 1 ? kc / 4 : 0, quads = (kc + 3) / 4, h, q;
    for (h = 0; h < 2; h++) {
        int32_t cols = jb - 16 * h < 0 ? 0 : (jb - 16 * h < 16 ? jb - 16 * h : 16);
        __mmask16 valid = (__mmask16)((1u << cols) - 1);
        const uint8_t *base = bt + (int64_t)16 * h * sn;
        for (q = 0; q < whole; q++) {
            __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, rows,
                                                    base + 4 * q, 1);
            _mm512_storeu_si512(panel + 128 * q + 64 * h,
                                _mm512_maskz_mov_epi32(valid, _mm512_xor_si512(v, flip)));
        }
        for (; q < quads; q++) {
            if (sn == 1 && sk != 1)
                intvit_vnni_pack_rows_quad(base, sk, cols, q, kc, flip, panel + 128 * q + 64 * h);
            else
                intvit_vnni_pack_quad(base, sn, sk, cols, q, kc, xb, panel + 128 * q + 64 * h);
        }
    }
}

/* The fused requantization of the panel of columns j0 .. j0 + jb - 1 (the rest 0). */
static inline void intvit_vnni_out_panel(const intvit_requant_into *rq, int32_t j0,
                                         int32_t jb, intvit_vnni_out *out) {
    int32_t m[32], e[32], j, h;
    for (j = 0; j < 32; j++) {
        int32_t at = rq->per_channel ? j0 + j : 0;
        m[j] = j < jb ? rq->m[at] : 0;
        e[j] = j < jb ? rq->e[at] : 0;
    }
    for (h = 0; h < 2; h++) {
        out->m[h] = _mm512_loadu_si512(m + 16 * h);
        out->e[h] = _mm512_loadu_si512(e + 16 * h);
    }
    out->lo = _mm512_set1_epi64(rq->lo);
    out->hi = _mm512_set1_epi64(rq->hi);
    out->y = rq->y;
    out->size = rq->size;
    out->rq = rq;
    out->col = intvit_y_col(rq, j0);
}

/* Whether each panel of 32 columns of an N-column product lies in one block of y's layout
 * (a panel's row is one contiguous store), as the vectors' epilogues need; else the
 * kernels requantize the whole c with intvit_requant_rows. */
static inline int32_t intvit_panels_whole(const intvit_requant_into *rq, int32_t N) {
    return rq->block >= N || rq->block % 32 == 0;
}

/* intvit_requant_rows in vectors, 32 columns at a time as a panel's epilogue does (the AMX
 * kernel's whole c, once its tiles are stored), the column blocks over the threads. */
static inline void intvit_vnni_requant_rows(int32_t M, int32_t N, const int32_t *c,
                                            const intvit_requant_into *rq) {
    int32_t j0;
    if (!intvit_panels_whole(rq, N)) {
        intvit_requant_rows(M, N, c, rq);
        return;
    }
    INTVIT_OMP("omp parallel for schedule(static)")
    for (j0 = 0; j0 < N; j0 += 32) {
        int32_t jb = N - j0 < 32 ? N - j0 : 32, i;
        intvit_vnni_out out;
        intvit_vnni_out_panel(rq, j0, jb, &out);
        for (i = 0; i < M; i++) {
            const int32_t *row = c + (int64_t)i * N + j0;
            intvit_vnni_store(&out, jb, intvit_y_row(rq, i) + out.col,
                              _mm512_maskz_loadu_epi32(intvit_half_mask(jb, 0), row),
                              _mm512_maskz_loadu_epi32(intvit_half_mask(jb, 1), row + 16));
        }
    }
}

/* Prefetch lines from .. to - 1 of rows of bt (row stride sn, `lines` cache lines of 64
 * bytes a row from bt): the weights of a layer come from L3 or memory (a ViT's linear
 * layers do not fit L2), and the panel's gathers would wait for each line; prefetched
 * while the previous panel is multiplied, they find them in L1 (12 linear layers of
 * DeiT-S on one thread, weights cycled through L3: 27.3 -> 23.9 ms). A prefetch never
 * faults and changes no value. */
static inline void intvit_prefetch_rows(const uint8_t *bt, int32_t sn, int32_t lines,
                                        int32_t from, int32_t to) {
    int32_t p;
    for (p = from; p < to; p++)
        _mm_prefetch((const char *)(bt + (int64_t)(p / lines) * sn + 64 * (p % lines)),
                     _MM_HINT_T0);
}

/* sum_{k < n} a[k], the bytes as int8_t where is_signed (n <= INTVIT_VNNI_KC): vpsadbw
 * adds 8 unsigned bytes into each int64 lane; a signed byte v is (v ^ 0x80) - 128. The
 * sum is at most 255 n < 2^31 in magnitude. */
static inline int32_t intvit_vnni_row_sum(const uint8_t *a, int32_t n, int32_t is_signed) {
    const __m512i zero = _mm512_setzero_si512();
    const __m512i flip = _mm512_set1_epi8((char)(is_signed ? 0x80 : 0));
    __m512i sum = zero;
    int32_t k;
    for (k = 0; k < n; k += 64) {
        __mmask64 valid = n - k >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (n - k)) - 1;
        __m512i v = _mm512_maskz_mov_epi8(
            valid, _mm512_xor_si512(_mm512_maskz_loadu_epi8(valid, a + k), flip));
        sum = _mm512_add_epi64(sum, _mm512_sad_epu8(v, zero));
    }
    return (int32_t)_mm512_reduce_add_epi64(sum) - (is_signed ? 128 * n : 0);
}

/* The VNNI kernel on bytes: a_signed, b_signed say whether a, bt hold int8_t (bt's
 * strides sn, sk: the weights' rows prefetched where sk = 1); rq, where not NULL, requantizes the last K block into rq->y (c then holds only the earlier
 * blocks' partial sums). One parallel region: every thread walks the K and M blocks, takes
 * its panels by a static omp for without a barrier (the same panels in every block: equal
 * loops of a region under schedule(static) split alike, so a thread reads back only the
 * c it wrote), and computes the rows' fixes itself. */
static inline void intvit_vnni_matmul(int32_t M, int32_t N, int32_t K, const uint8_t *a,
                                      int32_t a_signed, const uint8_t *bt, int32_t sn,
                                      int32_t sk, int32_t b_signed, const int32_t *bias,
                                      int32_t *c, const intvit_requant_into *rq) {
    uint8_t xb = (uint8_t)(a_signed == b_signed ? 0x80 : 0);
    int32_t fix = a_signed == b_signed ? (a_signed ? -128 : 128) : 0;
    if (rq != NULL && !intvit_panels_whole(rq, N)) {
        intvit_vnni_matmul(M, N, K, a, a_signed, bt, sn, sk, b_signed, bias, c, NULL);
        intvit_requant_rows(M, N, c, rq);
        return;
    }
    INTVIT_OMP("omp parallel if((int64_t)M * N * K >= INTVIT_OMP_MIN_MACS)")
    {
        uint8_t panel[INTVIT_VNNI_KC * 32], end_row[INTVIT_VNNI_KC];
        int32_t row_fix[INTVIT_MATMUL_MC];
        int32_t i, k0, i0, j0, kc, mc, quads, last;
        for (k0 = 0; k0 == 0 || k0 < K; k0 += INTVIT_VNNI_KC) {   /* K = 0: c = bias */
            kc = K - k0 < INTVIT_VNNI_KC ? K - k0 : INTVIT_VNNI_KC;
            last = rq != NULL && k0 + kc >= K;
            quads = (kc + 3) / 4;
            if (kc % 4 != 0 && M > 0) {
                memset(end_row, 0, (size_t)(4 * quads));
                memcpy(end_row, a + (int64_t)(M - 1) * K + k0, (size_t)kc);
            }
            for (i0 = 0; i0 < M; i0 += INTVIT_MATMUL_MC) {
                mc = M - i0 < INTVIT_MATMUL_MC ? M - i0 : INTVIT_MATMUL_MC;
                for (i = 0; i < mc; i++)
                    row_fix[i] = fix ? fix * intvit_vnni_row_sum(a + (int64_t)(i0 + i) * K + k0,
                                                                 kc, a_signed)
                                     : 0;
                INTVIT_OMP("omp for schedule(static) nowait")
                for (j0 = 0; j0 < N; j0 += 32) {
                    int32_t jb = N - j0 < 32 ? N - j0 : 32, r, rows, upto;
                    /* the next panel's rows of bt, prefetched a share per block of 8 rows */
                    int32_t lines = (kc + 63) / 64, blocks = (mc + 7) / 8;
                    int32_t ahead = sk == 1 && N - j0 > 32
                                        ? (N - j0 - 32 < 32 ? N - j0 - 32 : 32) * lines : 0;
                    int32_t step = (ahead + blocks - 1) / blocks;
                    const uint8_t *next = ahead ? bt + (int64_t)(j0 + 32) * sn + k0 : bt;
                    intvit_vnni_out out;
                    intvit_vnni_pack(bt + (int64_t)j0 * sn + (int64_t)k0 * sk, sn, sk, jb, kc, xb,
                                     panel);
                    if (last) intvit_vnni_out_panel(rq, j0, jb, &out);
                    for (r = 0; r < mc; r += 8) {
                        rows = mc - r < 8 ? mc - r : 8;
                        upto = (r / 8 + 1) * step < ahead ? (r / 8 + 1) * step : ahead;
                        intvit_prefetch_rows(next, sn, lines, (r / 8) * step, upto);
                        intvit_vnni_block(rows, jb, quads, a + (int64_t)(i0 + r) * K + k0, K,
                                          kc % 4 != 0 && i0 + r + rows == M ? end_row : NULL,
                                          panel, a_signed, row_fix + r, k0 == 0,
                                          bias ? bias + j0 : NULL,
                                          c + (int64_t)(i0 + r) * N + j0, N,
                                          last ? &out : NULL, i0 + r);
                    }
                }
            }
        }
    }
}

#ifdef INTVIT_HAVE_AMX
/* AMX kernel: the tile unit multiplies 16 x 64 bytes of a (rows i, 64 values of k) by
 * 16 x 64 bytes of b in quads (rows k / 4, 16 columns j x 4) into 16 x 16 int32 of c,
 * exactly, for each sign pair (_tile_dpbssd, dpbsud, dpbusd, dpbuud: no shift needed).
 * Per K block of INTVIT_VNNI_KC values and M block of INTVIT_MATMUL_MC rows, the rows of a
 * are copied as bytes zero-padded to a multiple of 64 (rows to a multiple of 32), and each
 * panel of 32 columns of bt as two tiles of quads (panel[t][q][j][u] = bt[16t + j][4q + u],
 * zero-padded). Tiles 0-3 hold a 32 x 32 block of c (loaded from c, so the sums go on from
 * bias and the earlier K blocks), 4-5 two row tiles of a, 6-7 the two column tiles. Every
 * partial sum is one of c's, bounded by the plan. Linux lets a process use the tile data
 * only once it asks (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)): every call asks
 * (a granted request is a cheap system call, and no state is kept), and where that is
 * refused it takes the VNNI kernel. */
#define INTVIT_AMX_KC ((INTVIT_VNNI_KC + 63) / 64 * 64) /* a K block padded to tiles */
#if INTVIT_MATMUL_MC % 32 != 0
#error "INTVIT_MATMUL_MC must be a multiple of 32 for the AMX kernel (two row tiles)"
#endif
extern long syscall(long number, ...);

static inline int32_t intvit_amx_ready(void) {
    return syscall(158 /* SYS_arch_prctl */, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                   18 /* XFEATURE_XTILEDATA */) == 0;
}

/* Palette 1, tiles 0-7 of 16 rows x 64 bytes. */
static inline void intvit_amx_configure(void) {
    uint8_t cfg[64];
    int32_t t;
    memset(cfg, 0, sizeof(cfg));
    cfg[0] = 1;
    for (t = 0; t < 8; t++) {
        cfg[16 + 2 * t] = 64;
        cfg[48 + t] = 16;
    }
    _tile_loadconfig(cfg);
}

#define INTVIT_AMX_DP4(DP) DP(0, 4, 6); DP(1, 4, 7); DP(2, 5, 6); DP(3, 5, 7)

/* c tiles += a tiles x b tiles; signs = 2 * (a signed) + (b signed). */
static inline void intvit_amx_dp4(int32_t signs) {
    switch (signs) {
    case 3: INTVIT_AMX_DP4(_tile_dpbssd); break;
    case 2: INTVIT_AMX_DP4(_tile_dpbsud); break;
    case 1: INTVIT_AMX_DP4(_tile_dpbusd); break;
    default: INTVIT_AMX_DP4(_tile_dpbuud); break;
    }
}

/* Tile t of the 32 x 32 block of c at (rows, cols) valid: straight from c when whole,
 * else through edge[t] (16 x 16, the rest zero); store == 1 writes it back. */
static inline void intvit_amx_c_tile(int32_t t, int32_t store, int32_t rows, int32_t cols,
                                     int32_t *c, int32_t ldc, int32_t *edge) {
    int32_t r0 = (t >> 1) * 16, j0 = (t & 1) * 16, i, j;
    int32_t nr = rows - r0 < 16 ? rows - r0 : 16, nc = cols - j0 < 16 ? cols - j0 : 16;
    int32_t *ct = nr > 0 && nc > 0 ? c + (int64_t)r0 * ldc + j0 : c;
    if (nr == 16 && nc == 16) {
        if (store) {
            switch (t) {
            case 0: _tile_stored(0, ct, 4 * ldc); break;
            case 1: _tile_stored(1, ct, 4 * ldc); break;
            case 2: _tile_stored(2, ct, 4 * ldc); break;
            default: _tile_stored(3, ct, 4 * ldc); break;
            }
        } else {
            switch (t) {
            case 0: _tile_loadd(0, ct, 4 * ldc); break;
            case 1: _tile_loadd(1, ct, 4 * ldc); break;
            case 2: _tile_loadd(2, ct, 4 * ldc); break;
            default: _tile_loadd(3, ct, 4 * ldc); break;
            }
        }
        return;
    }
    if (store) {
        switch (t) {
        case 0: _tile_stored(0, edge, 64); break;
        case 1: _tile_stored(1, edge, 64); break;
        case 2: _tile_stored(2, edge, 64); break;
        default: _tile_stored(3, edge, 64); break;
        }
        for (i = 0; i < nr; i++)
            for (j = 0; j < nc; j++) ct[(int64_t)i * ldc + j] = edge[16 * i + j];
        return;
    }
    memset(edge, 0, 16 * 16 * sizeof(int32_t));
    for (i = 0; i < nr; i++)
        for (j = 0; j < nc; j++) edge[16 * i + j] = ct[(int64_t)i * ldc + j];
    switch (t) {
    case 0: _tile_loadd(0, edge, 64); break;
    case 1: _tile_loadd(1, edge, 64); break;
    case 2: _tile_loadd(2, edge, 64); break;
    default: _tile_loadd(3, edge, 64); break;
    }
}

static inline void intvit_amx_matmul(int32_t M, int32_t N, int32_t K, const uint8_t *a,
                                     int32_t a_signed, const uint8_t *bt, int32_t sn,
                                     int32_t sk, int32_t b_signed, const int32_t *bias,
                                     int32_t *c, const intvit_requant_into *rq) {
    uint8_t a8[INTVIT_MATMUL_MC * INTVIT_AMX_KC];
    int32_t signs = 2 * a_signed + b_signed, i, j, k0, i0, j0, kc, mc, lda;
    if (!intvit_amx_ready()) {
        intvit_vnni_matmul(M, N, K, a, a_signed, bt, sn, sk, b_signed, bias, c, rq);
        return;
    }
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) c[(int64_t)i * N + j] = bias ? bias[j] : 0;
    for (k0 = 0; k0 < K; k0 += INTVIT_VNNI_KC) {
        kc = K - k0 < INTVIT_VNNI_KC ? K - k0 : INTVIT_VNNI_KC;
        lda = (kc + 63) / 64 * 64;
        for (i0 = 0; i0 < M; i0 += INTVIT_MATMUL_MC) {
            mc = M - i0 < INTVIT_MATMUL_MC ? M - i0 : INTVIT_MATMUL_MC;
            for (i = 0; i < (mc + 31) / 32 * 32; i++) {
                uint8_t *wr = a8 + (int64_t)i * lda;
                memset(wr, 0, (size_t)lda);
                if (i < mc) memcpy(wr, a + (int64_t)(i0 + i) * K + k0, (size_t)kc);
            }
            INTVIT_OMP("omp parallel if((int64_t)M * N * K >= INTVIT_OMP_MIN_MACS)")
            {
                intvit_amx_configure();
                INTVIT_OMP("omp for schedule(static)")
                for (j0 = 0; j0 < N; j0 += 32) {
                    uint8_t panel[2 * 16 * INTVIT_AMX_KC];
                    int32_t edge[4][256];
                    int32_t jb = N - j0 < 32 ? N - j0 : 32, quads = lda / 4, j, q, r, t, ch;
                    memset(panel, 0, (size_t)(2 * lda * 16));
                    for (j = 0; j < jb; j++) {
                        const uint8_t *br = bt + (int64_t)(j0 + j) * sn + (int64_t)k0 * sk;
                        uint8_t *pj = panel + (j >> 4) * (quads * 64) + (j & 15) * 4;
                        int32_t k;
                        if (sk == 1) {
                            for (q = 0; 4 * q + 4 <= kc; q++) memcpy(pj + 64 * q, br + 4 * q, 4);
                            if (4 * q < kc) memcpy(pj + 64 * q, br + 4 * q, (size_t)(kc - 4 * q));
                        } else {
                            for (k = 0; k < kc; k++)
                                pj[64 * (k / 4) + k % 4] = br[(int64_t)k * sk];
                        }
                    }
                    for (r = 0; r < mc; r += 32) {
                        int32_t rows = mc - r < 32 ? mc - r : 32;
                        int32_t *cb = c + (int64_t)(i0 + r) * N + j0;
                        const uint8_t *ar = a8 + (int64_t)r * lda;
                        for (t = 0; t < 4; t++) intvit_amx_c_tile(t, 0, rows, jb, cb, N, edge[t]);
                        for (ch = 0; ch < lda / 64; ch++) {
                            _tile_loadd(4, ar + 64 * ch, lda);
                            _tile_loadd(5, ar + 16 * lda + 64 * ch, lda);
                            _tile_loadd(6, panel + 1024 * ch, 64);
                            _tile_loadd(7, panel + quads * 64 + 1024 * ch, 64);
                            intvit_amx_dp4(signs);
                        }
                        for (t = 0; t < 4; t++) intvit_amx_c_tile(t, 1, rows, jb, cb, N, edge[t]);
                    }
                }
                _tile_release();
            }
        }
    }
    if (rq) intvit_vnni_requant_rows(M, N, c, rq);
}

static inline const char *intvit_matmul8_kernel(void) {
    return intvit_amx_ready() ? "amx" : "vnni";
}
#define INTVIT_MATMUL8_CALL intvit_amx_matmul
#else
static inline const char *intvit_matmul8_kernel(void) { return "vnni"; }
#define INTVIT_MATMUL8_CALL intvit_vnni_matmul
#endif

#define INTVIT_DEFINE_MATMUL8(NAME, TA, TB)                                               \
    INTVIT_DECLARE_MATMUL(NAME, TA, TB) {                                                 \
        INTVIT_MATMUL8_CALL(M, N, K, (const uint8_t *)a, INTVIT_SIGNED(TA),               \
                            (const uint8_t *)bt, sn, sk, INTVIT_SIGNED(TB), bias, c, NULL); \
    }
#else
static inline const char *intvit_matmul8_kernel(void) { return INTVIT_MATMUL_KERNEL; }
#define INTVIT_DEFINE_MATMUL8 INTVIT_DEFINE_MATMUL
#endif

/* --- 8-bit product with its requantization ---------------------------------------------
 * INTVIT_DEFINE_MATMUL8_RQ(NAME, TA, TB, TY): c = the 8-bit product of a and bt as
 * INTVIT_DEFINE_MATMUL8 (c: M x N int32, the caller's), and y = clamp(R(c; m, e), lo, hi)
 * as TY (y: M x N in the layout of layout[7], see intvit_requant_into;
 * per_channel as for INTVIT_DEFINE_REQUANTIZE): the network's product and the requantize
 * node that alone reads it, in one call. The VNNI and AVX2 kernels requantize each
 * block's sums straight from their accumulators in the last K block (see
 * intvit_vnni_block, intvit_avx2_block), so that c is written only between K blocks and
 * y is never read back; the portable build, and the debug build (whose dump shows c),
 * compute c and then requantize it row by row (intvit_requant_rows). */
#define INTVIT_DECLARE_MATMUL8_RQ(NAME, TA, TB, TY)                                      \
    void NAME(int32_t M, int32_t N, int32_t K, const TA *a, const TB *bt, int32_t sn,     \
              int32_t sk, const int32_t *bias, int32_t *c, const int32_t *m, const int8_t *e, \
              int32_t per_channel, int32_t lo, int32_t hi, TY *y, const int32_t *layout)

#define INTVIT_REQUANT_INTO(TY)                                                           \
    {m, e, per_channel, lo, hi, (int32_t)sizeof(TY), (void *)y,                            \
     layout[0], layout[1], layout[2], layout[3], layout[4], layout[5], layout[6]}

#if defined(INTVIT_HAVE_VNNI) && !defined(INTVIT_DEBUG)
#define INTVIT_DEFINE_MATMUL8_RQ(NAME, TA, TB, TY)                                       \
    INTVIT_DECLARE_MATMUL8_RQ(NAME, TA, TB, TY) {                                         \
        intvit_requant_into rq = INTVIT_REQUANT_INTO(TY);                                 \
        INTVIT_MATMUL8_CALL(M, N, K, (const uint8_t *)a, INTVIT_SIGNED(TA),                \
                            (const uint8_t *)bt, sn, sk, INTVIT_SIGNED(TB), bias, c, &rq); \
    }
#elif defined(INTVIT_HAVE_AVX2) && !defined(INTVIT_HAVE_VNNI)
#ifdef INTVIT_DEBUG
#define INTVIT_AVX2_FUSED 0
#else
#define INTVIT_AVX2_FUSED 1
#endif
#define INTVIT_DEFINE_MATMUL8_RQ(NAME, TA, TB, TY)                                       \
    INTVIT_AVX2_COPIES(NAME, TA, TB)                                                      \
    INTVIT_DECLARE_MATMUL8_RQ(NAME, TA, TB, TY) {                                         \
        intvit_requant_into rq = INTVIT_REQUANT_INTO(TY);                                 \
        intvit_avx2_matmul(M, N, K, a, NAME##_widen, bt, sn, sk, NAME##_pack, bias, c,     \
                           INTVIT_AVX2_FUSED ? &rq : NULL);                               \
        if (!INTVIT_AVX2_FUSED) intvit_requant_rows(M, N, c, &rq);                        \
    }
#else
#define INTVIT_DEFINE_MATMUL8_RQ(NAME, TA, TB, TY)                                       \
    static INTVIT_DEFINE_MATMUL8(NAME##_product, TA, TB)                                  \
    INTVIT_DECLARE_MATMUL8_RQ(NAME, TA, TB, TY) {                                         \
        intvit_requant_into rq = INTVIT_REQUANT_INTO(TY);                                 \
        NAME##_product(M, N, K, a, bt, sn, sk, bias, c);                                  \
        intvit_requant_rows(M, N, c, &rq);                                                \
    }
#endif

/* --- requantize -----------------------------------------------------------------------
 * y[r][c] = clamp(R(x[r][c]; m[c], e[c]), lo, hi) over rows x C values; per_channel = 0
 * uses m[0], e[0] for every value.
 *
 * Rows are split over OpenMP threads where a node has at least INTVIT_OMP_MIN_WORK values
 * (each value is computed alone, so the threads change no integer). With AVX-512 each row
 * takes NAME_row (INTVIT_DEFINE_REQUANTIZE_ROW), 16 values a step, and leaves the scalar
 * loop the last C mod 16 (all of them in the portable build): x read straight from the row
 * and widened to int32 lanes (intvit_widen16_<TX>), m and e loaded as 16 int32 lanes (or
 * broadcast), R in int64 by intvit_requant_halves (vpmuldq: v * m exact, + 2^(e-1); the
 * plan bounds the sum below 2^63; vpsravq: the floor, as floor_shift), the residual's R
 * added in int64 as well, then clamped in int64 (intvit_clamp_interleave) and stored
 * narrowed to TY (intvit_store16_<TY>: vpmovdb / vpmovdw truncate lanes that the clamp
 * put in TY's range). With AVX2 alone, NAME_row takes 8 values a step in the same way
 * (intvit_widen8_<TX>, intvit_avx2_requant_halves, intvit_avx2_clamp_interleave,
 * intvit_store8_<TY>: byte shuffles keep the lanes' low parts).
 */
#ifndef INTVIT_OMP_MIN_WORK
#define INTVIT_OMP_MIN_WORK 65536
#endif
#define INTVIT_CHUNK 64

#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512F__)
static inline __m512i intvit_load_v8(const int32_t *x) {
    return _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)x));
}

/* R(x[c]; m[c * s], e[c * s]) for 8 values from c. */
static inline __m512i intvit_requant_at(const int32_t *x, const int32_t *m, const int8_t *e,
                                        int32_t s, int32_t c) {
    __m512i mv = s ? intvit_load_v8(m + c) : _mm512_set1_epi64(m[0]);
    __m512i ev = s ? _mm512_cvtepi8_epi64(_mm_loadl_epi64((const __m128i *)(e + c)))
                   : _mm512_set1_epi64(e[0]);
    return intvit_requant_v8(intvit_load_v8(x + c), mv, ev);
}

/* x[0..16) widened to int32 lanes, one loader per element type. */
static inline __m512i intvit_widen16_int8_t(const int8_t *x) {
    return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)x));
}
static inline __m512i intvit_widen16_uint8_t(const uint8_t *x) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)x));
}
static inline __m512i intvit_widen16_int16_t(const int16_t *x) {
    return _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)x));
}
static inline __m512i intvit_widen16_int32_t(const int32_t *x) {
    return _mm512_loadu_si512((const void *)x);
}

/* y[0..16) = the 16 int32 lanes of v, each already in the range of y's type: the low
 * byte (vpmovdb), the low half (vpmovdw) or the lane itself. */
static inline void intvit_store16_int8_t(int8_t *y, __m512i v) {
    _mm_storeu_si128((__m128i *)y, _mm512_cvtepi32_epi8(v));
}
static inline void intvit_store16_uint8_t(uint8_t *y, __m512i v) {
    _mm_storeu_si128((__m128i *)y, _mm512_cvtepi32_epi8(v));
}
static inline void intvit_store16_int16_t(int16_t *y, __m512i v) {
    _mm256_storeu_si256((__m256i *)y, _mm512_cvtepi32_epi16(v));
}
static inline void intvit_store16_int32_t(int32_t *y, __m512i v) {
    _mm512_storeu_si512((void *)y, v);
}

/* R(v; m[c * s], e[c * s]) of the 16 int32 lanes v of the values from c, as the int64
 * halves of intvit_requant_halves. */
static inline void intvit_requant_halves_at(__m512i v, const int32_t *m, const int8_t *e,
                                            int32_t s, int32_t c, __m512i *even,
                                            __m512i *odd) {
    __m512i mv = s ? _mm512_loadu_si512((const void *)(m + c)) : _mm512_set1_epi32(m[0]);
    __m512i ev = s ? intvit_widen16_int8_t(e + c) : _mm512_set1_epi32(e[0]);
    intvit_requant_halves(v, mv, ev, even, odd);
}

/* ROW (NAME_row of the kernel NAME): y[c] = clamp(R(x[c]; m[c * s], e[c * s])
 * (+ R(res[c]; rm[c * rs], re[c * rs]) when res), lo, hi) for c < the returned count (C
 * rounded down to 16); the two R are added in int64 and only their sum is clamped. */
#define INTVIT_DEFINE_REQUANTIZE_ROW(ROW, TX, TR, TY)                                     \
    static inline int32_t ROW(int32_t C, const TX *x, const int32_t *m, const int8_t *e,  \
                              int32_t s, const TR *res, const int32_t *rm,                \
                              const int8_t *re, int32_t rs, int32_t lo, int32_t hi,       \
                              TY *y) {                                                    \
        __m512i vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);                 \
        int32_t c;                                                                        \
        for (c = 0; c + 16 <= C; c += 16) {                                               \
            __m512i even, odd, res_even, res_odd;                                         \
            intvit_requant_halves_at(intvit_widen16_##TX(x + c), m, e, s, c, &even, &odd); \
            if (res) {                                                                    \
                intvit_requant_halves_at(intvit_widen16_##TR(res + c), rm, re, rs, c,     \
                                         &res_even, &res_odd);                            \
                even = _mm512_add_epi64(even, res_even);                                  \
                odd = _mm512_add_epi64(odd, res_odd);                                     \
            }                                                                             \
            intvit_store16_##TY(y + c, intvit_clamp_interleave(even, odd, vlo, vhi));     \
        }                                                                                 \
        return c;                                                                         \
    }
#elif defined(INTVIT_HAVE_AVX2)
/* R(v; m[c * s], e[c * s]) of the 8 int32 lanes v of the values from c, as the int64
 * halves of intvit_avx2_requant_halves. */
static inline void intvit_avx2_requant_halves_at(__m256i v, const int32_t *m, const int8_t *e,
                                                 int32_t s, int32_t c, __m256i *even,
                                                 __m256i *odd) {
    __m256i mv = s ? _mm256_loadu_si256((const __m256i *)(m + c)) : _mm256_set1_epi32(m[0]);
    __m256i ev = s ? intvit_widen8_int8_t(e + c) : _mm256_set1_epi32(e[0]);
    intvit_avx2_requant_halves(v, mv, ev, even, odd);
}

/* ROW as with AVX-512, 8 values a step on AVX2 (C rounded down to 8). */
#define INTVIT_DEFINE_REQUANTIZE_ROW(ROW, TX, TR, TY)                                     \
    static inline int32_t ROW(int32_t C, const TX *x, const int32_t *m, const int8_t *e,  \
                              int32_t s, const TR *res, const int32_t *rm,                \
                              const int8_t *re, int32_t rs, int32_t lo, int32_t hi,       \
                              TY *y) {                                                    \
        __m256i vlo = _mm256_set1_epi64x(lo), vhi = _mm256_set1_epi64x(hi);               \
        int32_t c;                                                                        \
        for (c = 0; c + 8 <= C; c += 8) {                                                 \
            __m256i even, odd, res_even, res_odd;                                         \
            intvit_avx2_requant_halves_at(intvit_widen8_##TX(x + c), m, e, s, c, &even,   \
                                          &odd);                                          \
            if (res) {                                                                    \
                intvit_avx2_requant_halves_at(intvit_widen8_##TR(res + c), rm, re, rs, c, \
                                              &res_even, &res_odd);                       \
                even = _mm256_add_epi64(even, res_even);                                  \
                odd = _mm256_add_epi64(odd, res_odd);                                     \
            }                                                                             \
            intvit_store8_##TY(y + c, intvit_avx2_clamp_interleave(even, odd, vlo, vhi)); \
        }                                                                                 \
        return c;                                                                         \
    }
#else
#define INTVIT_DEFINE_REQUANTIZE_ROW(ROW, TX, TR, TY)                                     \
    static inline int32_t ROW(int32_t C, const TX *x, const int32_t *m, const int8_t *e,  \
                              int32_t s, const TR *res, const int32_t *rm,                \
                              const int8_t *re, int32_t rs, int32_t lo, int32_t hi,       \
                              TY *y) {                                                    \
        (void)C; (void)x; (void)m; (void)e; (void)s; (void)res; (void)rm; (void)re;       \
        (void)rs; (void)lo; (void)hi; (void)y;                                            \
        return 0;                                                                         \
    }
#endif

#define INTVIT_DECLARE_REQUANTIZE(NAME, TX, TY)                                           \
    void NAME(int32_t rows, int32_t C, const TX *x, const int32_t *m, const int8_t *e,    \
              int32_t per_channel, int32_t lo, int32_t hi, TY *y)

#define INTVIT_DEFINE_REQUANTIZE(NAME, TX, TY)                                            \
    INTVIT_DEFINE_REQUANTIZE_ROW(NAME##_row, TX, TX, TY)                                  \
    INTVIT_DECLARE_REQUANTIZE(NAME, TX, TY) {                                             \
        int32_t r, s = per_channel ? 1 : 0;                                               \
        INTVIT_OMP("omp parallel for schedule(static) if((int64_t)rows * C >= INTVIT_OMP_MIN_WORK)") \
        for (r = 0; r < rows; r++) {                                                      \
            const TX *xr = x + (int64_t)r * C;                                            \
            TY *yr = y + (int64_t)r * C;                                                  \
            int32_t c;                                                                    \
            for (c = NAME##_row(C, xr, m, e, s, NULL, NULL, NULL, 0, lo, hi, yr); c < C; c++) \
                yr[c] = (TY)intvit_clamp(intvit_requant(xr[c], m[c * s], e[c * s]), lo, hi); \
        }                                                                                 \
    }

/* y[r][c] = clamp(R(x[r][c]; m[c], e[c]) + R(res[r % res_rows][c]; rm[c], re[c]), lo, hi):
 * the residual sum of a transformer block (res_rows = rows), or a constant residual
 * shared by every batch entry, window or head (res_rows divides rows). */
#define INTVIT_DECLARE_REQUANTIZE_ADD(NAME, TX, TR, TY)                                   \
    void NAME(int32_t rows, int32_t C, const TX *x, const int32_t *m, const int8_t *e,    \
              int32_t per_channel, const TR *res, int32_t res_rows, const int32_t *rm,    \
              const int8_t *re, int32_t res_per_channel, int32_t lo, int32_t hi, TY *y)

#define INTVIT_DEFINE_REQUANTIZE_ADD(NAME, TX, TR, TY)                                    \
    INTVIT_DEFINE_REQUANTIZE_ROW(NAME##_row, TX, TR, TY)                                  \
    INTVIT_DECLARE_REQUANTIZE_ADD(NAME, TX, TR, TY) {                                     \
        int32_t r, s = per_channel ? 1 : 0, rs = res_per_channel ? 1 : 0;                 \
        INTVIT_OMP("omp parallel for schedule(static) if((int64_t)rows * C >= INTVIT_OMP_MIN_WORK)") \
        for (r = 0; r < rows; r++) {                                                      \
            const TX *xr = x + (int64_t)r * C;                                            \
            const TR *qr = res + (int64_t)(r % res_rows) * C;                             \
            TY *yr = y + (int64_t)r * C;                                                  \
            int32_t c;                                                                    \
            for (c = NAME##_row(C, xr, m, e, s, qr, rm, re, rs, lo, hi, yr); c < C; c++)  \
                yr[c] = (TY)intvit_clamp(intvit_requant(xr[c], m[c * s], e[c * s])        \
                                         + intvit_requant(qr[c], rm[c * rs], re[c * rs]), \
                                         lo, hi);                                         \
        }                                                                                 \
    }

/* --- table look-up: y[i] = table[x[i] - lo] --------------------------------------------
 * The plan proves x[i] - lo in [0, table_len). Blocks of INTVIT_LOOKUP_BLOCK values are
 * split over OpenMP threads where n >= INTVIT_OMP_MIN_WORK (each value stands alone).
 *
 * With AVX-512 VBMI, 8-bit x and 8-bit y (and table_len <= 256) take
 * intvit_lookup8_chunk, 64 values a vector: the index x - lo mod 2^8 is exact (it lies in
 * [0, 256)); the table, copied to 256 bytes (zeros past table_len, never read), is four
 * vectors t0..t3, and
 *   y = idx < 128 ? t[idx] from (t0, t1) : t[idx - 128] from (t2, t3)
 * is two vpermi2b (each reads the index's low 7 bits) and a blend on the index's bit 7
 * (vpmovb2m). With AVX2 alone, 32 values a vector by 16 byte shuffles (see below). Other
 * types, the portable build and the last values take the scalar loop.
 */
#ifndef INTVIT_LOOKUP_BLOCK
#define INTVIT_LOOKUP_BLOCK 4096
#endif

#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512VBMI__) && defined(__AVX512BW__)
#define INTVIT_HAVE_LOOKUP8 1
/* y[i] = t[(x[i] - lo) mod 2^8] for i < the returned count (n rounded down to 64); t has
 * 256 entries. */
static inline int32_t intvit_lookup8_chunk(int32_t n, const uint8_t *x, const uint8_t *t,
                                           int32_t lo, uint8_t *y) {
    __m512i t0 = _mm512_loadu_si512((const void *)t);
    __m512i t1 = _mm512_loadu_si512((const void *)(t + 64));
    __m512i t2 = _mm512_loadu_si512((const void *)(t + 128));
    __m512i t3 = _mm512_loadu_si512((const void *)(t + 192));
    __m512i vlo = _mm512_set1_epi8((char)(((lo + 128) & 255) - 128)); /* lo mod 2^8 */
    int32_t i;
    for (i = 0; i + 64 <= n; i += 64) {
        __m512i idx = _mm512_sub_epi8(_mm512_loadu_si512((const void *)(x + i)), vlo);
        __m512i low = _mm512_permutex2var_epi8(t0, idx, t1);
        __m512i high = _mm512_permutex2var_epi8(t2, idx, t3);
        _mm512_storeu_si512((void *)(y + i),
                            _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), low, high));
    }
    return i;
}
#elif defined(INTVIT_HAVE_AVX2)
#define INTVIT_HAVE_LOOKUP8 1
/* As above on AVX2, 32 values a vector: the table is 16 rows of 16 bytes, and y takes
 * row h's vpshufb by the index's low 4 bits where the index's high 4 bits are h (a
 * compare and a blend a row). */
static inline int32_t intvit_lookup8_chunk(int32_t n, const uint8_t *x, const uint8_t *t,
                                           int32_t lo, uint8_t *y) {
    __m256i rows[16], vlo = _mm256_set1_epi8((char)(((lo + 128) & 255) - 128));
    __m256i nibble = _mm256_set1_epi8(15);
    int32_t i, h;
    for (h = 0; h < 16; h++)
        rows[h] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16 * h)));
    for (i = 0; i + 32 <= n; i += 32) {
        __m256i idx = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)(x + i)), vlo);
        __m256i low = _mm256_and_si256(idx, nibble);
        __m256i high = _mm256_and_si256(_mm256_srli_epi16(idx, 4), nibble), out = low;
        for (h = 0; h < 16; h++)
            out = _mm256_blendv_epi8(out, _mm256_shuffle_epi8(rows[h], low),
                                     _mm256_cmpeq_epi8(high, _mm256_set1_epi8((char)h)));
        _mm256_storeu_si256((__m256i *)(y + i), out);
    }
    return i;
}
#else
#define INTVIT_HAVE_LOOKUP8 0
static inline int32_t intvit_lookup8_chunk(int32_t n, const uint8_t *x, const uint8_t *t,
                                           int32_t lo, uint8_t *y) {
    (void)n; (void)x; (void)t; (void)lo; (void)y;
    return 0;
}
#endif

/* t[0..256) = table[0..table_len) then zeros; returns t. */
static inline const uint8_t *intvit_table256(const void *table, int32_t table_len,
                                             uint8_t *t) {
    memcpy(t, table, (size_t)table_len);
    memset(t + table_len, 0, (size_t)(256 - table_len));
    return t;
}

#define INTVIT_DECLARE_LOOKUP(NAME, TX, TY)                                               \
    void NAME(int32_t n, const TX *x, const TY *table, int32_t table_len, int32_t lo, TY *y)

#define INTVIT_DEFINE_LOOKUP(NAME, TX, TY)                                                \
    INTVIT_DECLARE_LOOKUP(NAME, TX, TY) {                                                 \
        uint8_t padded[256];                                                              \
        const uint8_t *t = INTVIT_HAVE_LOOKUP8 && sizeof(TX) == 1 && sizeof(TY) == 1      \
                                   && table_len <= 256                                    \
                               ? intvit_table256(table, table_len, padded) : NULL;        \
        int32_t b;                                                                        \
        INTVIT_OMP("omp parallel for schedule(static) if(n >= INTVIT_OMP_MIN_WORK)")      \
        for (b = 0; b < n; b += INTVIT_LOOKUP_BLOCK) {                                    \
            int32_t k = n - b < INTVIT_LOOKUP_BLOCK ? n - b : INTVIT_LOOKUP_BLOCK;        \
            int32_t i = t ? intvit_lookup8_chunk(k, (const uint8_t *)(x + b), t, lo,      \
                                                 (uint8_t *)(y + b)) : 0;                 \
            for (i += b; i < b + k; i++) y[i] = table[(int32_t)x[i] - lo];                \
        }                                                                                 \
    }

/* --- softmax row ------------------------------------------------------------------------
 * Per row of L values: d_i = x_i - max(x), e_i = exp_table[d_i + table_len - 1],
 * S = sum e_i, factor = floor(numerator / max(S, 1)), p_i = e_i * factor,
 * y_i = clamp(R(p_i; m, e), lo, hi). The exporter checks e_max * L < numerator, so S and
 * p_i fit 32 bits when numerator < 2^31 (I-ViT) and 34 bits otherwise (I-BERT: the
 * program's 64-bit step). The plan proves d_i in [1 - table_len, 0], so every index is in
 * the table.
 *
 * The row is read in blocks of INTVIT_SOFTMAX_BLOCK values: the sum pass keeps each
 * block's e_i in ex[], so a row of one block (every ViT and Swin row) reads the table once
 * and the last step takes e_i from ex[]; a longer row reads its table entries again, block
 * by block, for the last step.
 *
 * With AVX-512 (F and DQ) each pass takes 16 values a vector, widened to int32 lanes
 * (intvit_widen16_<T>), and leaves the scalar loop the last n mod 16:
 *   intvit_softmax_top_<T>   max(x): vpmaxsd lanes, then the lanes' maximum;
 *   intvit_softmax_sum_<T>   e_i: vpgatherdd of exp_table at x_i + (table_len - 1 - top)
 *                            (the lanes wrap mod 2^32 on the way, the index itself is in
 *                            range), stored to ex[]; S: each e_i widened to int64 and added
 *                            in int64 lanes, so S is exact for any L and any table
 *                            (8-bit rows with VBMI take the byte planes below first);
 *   intvit_softmax_exp_<T>   e_i of one block by the same gather (rows of several blocks);
 *   intvit_softmax_last_<T>  the last step into y of type T, 16 values a vector: e_i in
 *                            int64 halves (even and odd lanes), one vpmullq by
 *                            fm = factor * m, computed once per row, + 2^(e-1), the floor
 *                            shift vpsravq, the clamp in int64 (intvit_clamp_interleave)
 *                            and the narrowed store (intvit_store16_<T>).
 * e_i * fm equals (e_i * factor) * m, the scalar loop's p_i * m, because neither product
 * leaves int64: 0 <= e_i <= S gives 0 <= p_i = e_i * factor <= numerator, so
 * |e_i * factor * m| <= numerator * |m| < 2^63 (the plan checks the last bound), and
 * factor <= numerator gives |fm| <= numerator * |m| < 2^63 too.
 * With AVX2 alone (no AVX-512 F) the passes take 8 values a vector the same way.
 * Max, sum and products are exact, so the integers equal the scalar loop's in any order.
 */
#ifndef INTVIT_SOFTMAX_BLOCK
#define INTVIT_SOFTMAX_BLOCK 1024
#endif

#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
/* exp_table[x_i - top + table_len - 1] for the 16 values from x (lanes wrap mod 2^32, the
 * index they end at is in the table). */
#define INTVIT_SOFTMAX_GATHER(T, x, top, table, table_len)                                \
    _mm512_i32gather_epi32(                                                               \
        _mm512_add_epi32(intvit_widen16_##T(x), _mm512_sub_epi32(                         \
            _mm512_set1_epi32((table_len) - 1), _mm512_set1_epi32(top))), (table), 4)

/* The row passes over the first n rounded down to 16 values (the returned count):
 *   top_T: *top = max(*top, x_i);   exp_T: ex[i] = e_i;
 *   sum_T: ex[i] = e_i and *sum += their sum, in int64;
 *   last_T: y[i] = clamp(R(ex[i] * fm; 1, e), lo, hi) as T (fm = factor * m). */
#define INTVIT_DEFINE_SOFTMAX_ROW(T)                                                      \
    static inline int32_t intvit_softmax_top_##T(int32_t n, const T *x, int32_t *top) {   \
        __m512i v = _mm512_set1_epi32(*top);                                              \
        int32_t i;                                                                        \
        for (i = 0; i + 16 <= n; i += 16) v = _mm512_max_epi32(v, intvit_widen16_##T(x + i)); \
        *top = _mm512_reduce_max_epi32(v);                                                \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_sum_##T(int32_t n, const T *x, int32_t top,      \
                                                 const int32_t *table, int32_t table_len, \
                                                 int32_t *ex, int64_t *sum) {             \
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();                 \
        int32_t i;                                                                        \
        for (i = 0; i + 16 <= n; i += 16) {                                               \
            __m512i ev = INTVIT_SOFTMAX_GATHER(T, x + i, top, table, table_len);          \
            _mm512_storeu_si512((void *)(ex + i), ev);                                    \
            s0 = _mm512_add_epi64(s0, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(ev))); \
            s1 = _mm512_add_epi64(s1, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(ev, 1))); \
        }                                                                                 \
        *sum += _mm512_reduce_add_epi64(_mm512_add_epi64(s0, s1));                        \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_exp_##T(int32_t n, const T *x, int32_t top,      \
                                                 const int32_t *table, int32_t table_len, \
                                                 int32_t *ex) {                           \
        int32_t i;                                                                        \
        for (i = 0; i + 16 <= n; i += 16)                                                 \
            _mm512_storeu_si512((void *)(ex + i),                                         \
                                INTVIT_SOFTMAX_GATHER(T, x + i, top, table, table_len));  \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_last_##T(int32_t n, const int32_t *ex, int64_t fm, \
                                                  int32_t e, int32_t lo, int32_t hi, T *y) { \
        __m512i f = _mm512_set1_epi64(fm), ev = _mm512_set1_epi64(e);                     \
        __m512i half = _mm512_set1_epi64(e > 0 ? (int64_t)1 << (e - 1) : 0);             \
        __m512i vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);                 \
        int32_t i;                                                                        \
        for (i = 0; i + 16 <= n; i += 16) {                                               \
            __m512i v = _mm512_loadu_si512((const void *)(ex + i));                       \
            __m512i even = _mm512_srai_epi64(_mm512_slli_epi64(v, 32), 32);               \
            __m512i odd = _mm512_srai_epi64(v, 32);                                       \
            even = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mullo_epi64(even, f), half), ev); \
            odd = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mullo_epi64(odd, f), half), ev); \
            intvit_store16_##T(y + i, intvit_clamp_interleave(even, odd, vlo, vhi));      \
        }                                                                                 \
        return i;                                                                         \
    }
#elif defined(INTVIT_HAVE_AVX2) && !defined(__AVX512F__)
/* As with AVX-512, 8 values a vector (vpgatherdd of 8 lanes); the last step has no
 * vpmullq on AVX2, so e_i * fm (fm = fh 2^32 + fl, 0 <= fl < 2^32) is formed mod 2^64 as
 * e_i fl + e_i fh 2^32 (vpmuludq and vpmuldq: 0 <= e_i < 2^31, as the exporter refuses a
 * table with a negative entry); the true product fits int64 (see above), so the wrapped
 * sum is it. */
#define INTVIT_SOFTMAX_GATHER8(T, x, top, table, table_len)                               \
    _mm256_i32gather_epi32(                                                               \
        (const int *)(table), _mm256_add_epi32(intvit_widen8_##T(x), _mm256_sub_epi32(    \
            _mm256_set1_epi32((table_len) - 1), _mm256_set1_epi32(top))), 4)

/* e * fm on the int64 lanes whose low halves hold e (0 <= e < 2^31; high halves
 * ignored). */
static inline __m256i intvit_avx2_mul_e_fm(__m256i e, __m256i fl, __m256i fh) {
    return _mm256_add_epi64(_mm256_mul_epu32(e, fl),
                            _mm256_slli_epi64(_mm256_mul_epi32(e, fh), 32));
}

#define INTVIT_DEFINE_SOFTMAX_ROW(T)                                                      \
    static inline int32_t intvit_softmax_top_##T(int32_t n, const T *x, int32_t *top) {   \
        __m256i v = _mm256_set1_epi32(*top);                                              \
        int32_t i, lane[8], t;                                                            \
        for (i = 0; i + 8 <= n; i += 8) v = _mm256_max_epi32(v, intvit_widen8_##T(x + i)); \
        _mm256_storeu_si256((__m256i *)lane, v);                                          \
        for (t = 0; t < 8; t++) *top = lane[t] > *top ? lane[t] : *top;                   \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_sum_##T(int32_t n, const T *x, int32_t top,      \
                                                 const int32_t *table, int32_t table_len, \
                                                 int32_t *ex, int64_t *sum) {             \
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();                 \
        int32_t i;                                                                        \
        for (i = 0; i + 8 <= n; i += 8) {                                                 \
            __m256i ev = INTVIT_SOFTMAX_GATHER8(T, x + i, top, table, table_len);         \
            _mm256_storeu_si256((__m256i *)(ex + i), ev);                                 \
            s0 = _mm256_add_epi64(s0, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ev)));  \
            s1 = _mm256_add_epi64(s1, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ev, 1))); \
        }                                                                                 \
        *sum += intvit_avx2_sum64(_mm256_add_epi64(s0, s1));                              \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_exp_##T(int32_t n, const T *x, int32_t top,      \
                                                 const int32_t *table, int32_t table_len, \
                                                 int32_t *ex) {                           \
        int32_t i;                                                                        \
        for (i = 0; i + 8 <= n; i += 8)                                                   \
            _mm256_storeu_si256((__m256i *)(ex + i),                                      \
                                INTVIT_SOFTMAX_GATHER8(T, x + i, top, table, table_len)); \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_last_##T(int32_t n, const int32_t *ex, int64_t fm, \
                                                  int32_t e, int32_t lo, int32_t hi, T *y) { \
        __m256i fl = _mm256_set1_epi64x((int64_t)((uint64_t)fm & 0xFFFFFFFFu));           \
        __m256i fh = _mm256_set1_epi64x(fm >> 32), ev = _mm256_set1_epi64x(e);            \
        __m256i vlo = _mm256_set1_epi64x(lo), vhi = _mm256_set1_epi64x(hi);               \
        int32_t i;                                                                        \
        for (i = 0; i + 8 <= n; i += 8) {                                                 \
            __m256i v = _mm256_loadu_si256((const __m256i *)(ex + i));                    \
            __m256i even = intvit_avx2_round_shift(intvit_avx2_mul_e_fm(v, fl, fh), ev);  \
            __m256i odd = intvit_avx2_round_shift(                                        \
                intvit_avx2_mul_e_fm(_mm256_srli_epi64(v, 32), fl, fh), ev);              \
            intvit_store8_##T(y + i, intvit_avx2_clamp_interleave(even, odd, vlo, vhi));  \
        }                                                                                 \
        return i;                                                                         \
    }
#else
#define INTVIT_DEFINE_SOFTMAX_ROW(T)                                                      \
    static inline int32_t intvit_softmax_top_##T(int32_t n, const T *x, int32_t *top) {   \
        (void)n; (void)x; (void)top;                                                      \
        return 0;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_sum_##T(int32_t n, const T *x, int32_t top,      \
                                                 const int32_t *table, int32_t table_len, \
                                                 int32_t *ex, int64_t *sum) {             \
        (void)n; (void)x; (void)top; (void)table; (void)table_len; (void)ex; (void)sum;   \
        return 0;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_exp_##T(int32_t n, const T *x, int32_t top,      \
                                                 const int32_t *table, int32_t table_len, \
                                                 int32_t *ex) {                           \
        (void)n; (void)x; (void)top; (void)table; (void)table_len; (void)ex;              \
        return 0;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_softmax_last_##T(int32_t n, const int32_t *ex, int64_t fm, \
                                                  int32_t e, int32_t lo, int32_t hi, T *y) { \
        (void)n; (void)ex; (void)fm; (void)e; (void)lo; (void)hi; (void)y;                \
        return 0;                                                                         \
    }
#endif
INTVIT_DEFINE_SOFTMAX_ROW(int8_t)
INTVIT_DEFINE_SOFTMAX_ROW(uint8_t)
INTVIT_DEFINE_SOFTMAX_ROW(int16_t)
INTVIT_DEFINE_SOFTMAX_ROW(int32_t)

/* Exponentials of 8-bit rows by byte planes (AVX-512 F, DQ, BW and VBMI), no gathers.
 * For x of int8_t or uint8_t, idx_i = x_i - top + 255 lies in [0, 255]: top - 255 <= x_i
 * <= top because both lie in one 8-bit range ([-128, 127] or [0, 255]), which is 256 wide.
 * The table index of e_i is x_i - top + table_len - 1 = table_len - 256 + idx_i, so the
 * 256-entry window
 *   W[t] = exp_table[table_len - 256 + t]   (0 where table_len - 256 + t < 0: the plan
 *                                            proves those indices are never read)
 * holds every e_i of every row: e_i = W[idx_i]. W splits into byte planes
 *   P_b[t] = (W[t] >> 8b) & 255,   W[t] = P_0[t] | P_1[t] << 8 | P_2[t] << 16 | P_3[t] << 24,
 * built once per kernel call (intvit_softmax_planes: all four, as three, which would hold
 * I-ViT's table (e_max 753664 < 2^24), measured no faster; the gather path takes a table
 * whose window has a negative entry). Per 64 values (intvit_softmax_sum_planes):
 *   idx = x + (255 - top) mod 2^8, in bytes: exact, as idx_i lies in [0, 256), and the
 *         same for int8_t and uint8_t (x's byte is x mod 2^8 in both);
 *   P_b[idx] by two vpermi2b and a blend on idx's bit 7, as intvit_lookup8_chunk;
 *   e = the planes' bytes interleaved by vpunpck{l,h}bw and vpunpck{l,h}wd into int32
 *       lanes; these unpack within 128-bit lanes, so x's bytes are first put in the order
 *       that makes the four dword vectors e_0..15, e_16..31, e_32..47, e_48..63
 *       (intvit_softmax_plane_order);
 *   S += sum_b (sum_i P_b[idx_i]) << 8b: each plane's byte sum by vpsadbw in int64 lanes,
 *       which equals sum_i e_i exactly (e_i >= 0 is the sum of its planes' bytes << 8b).
 * The rest of the row (n mod 64 values) takes the gather, then the scalar loop.
 */
#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__) \
    && defined(__AVX512VBMI__) && defined(__AVX512BW__)
/* planes[256 b + t] = P_b[t] for b < 4; returns 1, or 0 where a window entry is
 * negative. */
static inline int32_t intvit_softmax_planes(const int32_t *table, int32_t table_len,
                                            uint8_t *planes) {
    int32_t t, b;
    for (t = 0; t < 256; t++) {
        int32_t k = table_len - 256 + t, w = k >= 0 ? table[k] : 0;
        if (w < 0) return 0;
        for (b = 0; b < 4; b++) planes[256 * b + t] = (uint8_t)(((uint32_t)w >> (8 * b)) & 255);
    }
    return 1;
}

/* The byte order o with o[16k + 4q + j] = 16q + 4k + j (k: 128-bit lane, q: dword
 * vector, j < 4): after the in-lane unpacks, byte 16k + 4q + j lands in dword 4k + j of
 * vector q, which is value 16q + 4k + j. */
static inline __m512i intvit_softmax_plane_order(void) {
    uint8_t o[64];
    int32_t p;
    for (p = 0; p < 64; p++) o[p] = (uint8_t)(16 * ((p >> 2) & 3) + 4 * (p >> 4) + (p & 3));
    return _mm512_loadu_si512((const void *)o);
}

/* P[idx] for the 64 bytes of idx from the plane's four vectors p[0..3]. */
static inline __m512i intvit_softmax_plane64(const __m512i *p, __m512i idx, __mmask64 high) {
    return _mm512_mask_blend_epi8(high, _mm512_permutex2var_epi8(p[0], idx, p[1]),
                                  _mm512_permutex2var_epi8(p[2], idx, p[3]));
}

/* ex[0..64) = P_0 | P_1 << 8 | P_2 << 16 | P_3 << 24 from planes in plane order. */
static inline void intvit_softmax_store_planes(int32_t *ex, __m512i p0, __m512i p1,
                                               __m512i p2, __m512i p3) {
    __m512i w01lo = _mm512_unpacklo_epi8(p0, p1), w01hi = _mm512_unpackhi_epi8(p0, p1);
    __m512i w23lo = _mm512_unpacklo_epi8(p2, p3), w23hi = _mm512_unpackhi_epi8(p2, p3);
    _mm512_storeu_si512((void *)ex, _mm512_unpacklo_epi16(w01lo, w23lo));
    _mm512_storeu_si512((void *)(ex + 16), _mm512_unpackhi_epi16(w01lo, w23lo));
    _mm512_storeu_si512((void *)(ex + 32), _mm512_unpacklo_epi16(w01hi, w23hi));
    _mm512_storeu_si512((void *)(ex + 48), _mm512_unpackhi_epi16(w01hi, w23hi));
}

/* ex[i] = e_i for the first n rounded down to 64 values of x (the returned count), and
 * *sum += their sum; nothing where the planes are not built (built = 0). */
static inline int32_t intvit_softmax_sum_planes(int32_t built, int32_t n, const uint8_t *x,
                                                int32_t top, const uint8_t *planes,
                                                int32_t *ex, int64_t *sum) {
    __m512i t[16], s[4], zero = _mm512_setzero_si512(), order;
    __m512i shift = _mm512_set1_epi8((char)(((255 - top + 128) & 255) - 128));
    int32_t i, b;
    if (!built) return 0;
    order = intvit_softmax_plane_order();
    for (b = 0; b < 16; b++) t[b] = _mm512_loadu_si512((const void *)(planes + 64 * b));
    for (b = 0; b < 4; b++) s[b] = zero;
    for (i = 0; i + 64 <= n; i += 64) {
        __m512i idx = _mm512_add_epi8(
            _mm512_permutexvar_epi8(order, _mm512_loadu_si512((const void *)(x + i))), shift);
        __mmask64 high = _mm512_movepi8_mask(idx);
        __m512i p0 = intvit_softmax_plane64(t, idx, high);
        __m512i p1 = intvit_softmax_plane64(t + 4, idx, high);
        __m512i p2 = intvit_softmax_plane64(t + 8, idx, high);
        __m512i p3 = intvit_softmax_plane64(t + 12, idx, high);
        intvit_softmax_store_planes(ex + i, p0, p1, p2, p3);
        s[0] = _mm512_add_epi64(s[0], _mm512_sad_epu8(p0, zero));
        s[1] = _mm512_add_epi64(s[1], _mm512_sad_epu8(p1, zero));
        s[2] = _mm512_add_epi64(s[2], _mm512_sad_epu8(p2, zero));
        s[3] = _mm512_add_epi64(s[3], _mm512_sad_epu8(p3, zero));
    }
    *sum += _mm512_reduce_add_epi64(_mm512_add_epi64(
        _mm512_add_epi64(s[0], _mm512_slli_epi64(s[1], 8)),
        _mm512_add_epi64(_mm512_slli_epi64(s[2], 16), _mm512_slli_epi64(s[3], 24))));
    return i;
}
#else
static inline int32_t intvit_softmax_planes(const int32_t *table, int32_t table_len,
                                            uint8_t *planes) {
    (void)table; (void)table_len; (void)planes;
    return 0;
}
static inline int32_t intvit_softmax_sum_planes(int32_t built, int32_t n, const uint8_t *x,
                                                int32_t top, const uint8_t *planes,
                                                int32_t *ex, int64_t *sum) {
    (void)built; (void)n; (void)x; (void)top; (void)planes; (void)ex; (void)sum;
    return 0;
}
#endif

#define INTVIT_DECLARE_SOFTMAX(NAME, TX, TY)                                              \
    void NAME(int32_t rows, int32_t L, const TX *x, const int32_t *exp_table,             \
              int32_t table_len, int64_t numerator, int32_t m, int32_t e, int32_t lo,     \
              int32_t hi, TY *y)

#define INTVIT_DEFINE_SOFTMAX(NAME, TX, TY)                                               \
    INTVIT_DECLARE_SOFTMAX(NAME, TX, TY) {                                                \
        uint8_t planes[4 * 256];                                                          \
        int32_t r, i, built = sizeof(TX) == 1                                             \
                                  ? intvit_softmax_planes(exp_table, table_len, planes) : 0; \
        INTVIT_OMP("omp parallel for schedule(static) private(i) if((int64_t)rows * L >= INTVIT_OMP_MIN_WORK)") \
        for (r = 0; r < rows; r++) {                                                      \
            const TX *xr = x + (int64_t)r * L;                                            \
            TY *yr = y + (int64_t)r * L;                                                  \
            int32_t top = xr[0], c0, n, ex[INTVIT_SOFTMAX_BLOCK];                         \
            int64_t sum = 0, factor, fm;                                                  \
            for (i = intvit_softmax_top_##TX(L, xr, &top); i < L; i++)                    \
                top = xr[i] > top ? xr[i] : top;                                          \
            for (c0 = 0; c0 < L; c0 += INTVIT_SOFTMAX_BLOCK) {                            \
                n = L - c0 < INTVIT_SOFTMAX_BLOCK ? L - c0 : INTVIT_SOFTMAX_BLOCK;        \
                i = intvit_softmax_sum_planes(built, n, (const uint8_t *)(xr + c0), top,  \
                                              planes, ex, &sum);                          \
                for (i += intvit_softmax_sum_##TX(n - i, xr + c0 + i, top, exp_table,     \
                                                  table_len, ex + i, &sum); i < n; i++) { \
                    ex[i] = exp_table[xr[c0 + i] - top + table_len - 1];                  \
                    sum += ex[i];                                                         \
                }                                                                         \
            }                                                                             \
            factor = numerator / (sum > 1 ? sum : 1);                                     \
            fm = factor * m;                                                              \
            for (c0 = 0; c0 < L; c0 += INTVIT_SOFTMAX_BLOCK) {                            \
                n = L - c0 < INTVIT_SOFTMAX_BLOCK ? L - c0 : INTVIT_SOFTMAX_BLOCK;        \
                if (L > INTVIT_SOFTMAX_BLOCK)                                             \
                    for (i = intvit_softmax_exp_##TX(n, xr + c0, top, exp_table, table_len, \
                                                     ex); i < n; i++)                     \
                        ex[i] = exp_table[xr[c0 + i] - top + table_len - 1];              \
                for (i = intvit_softmax_last_##TY(n, ex, fm, e, lo, hi, yr + c0); i < n; i++) \
                    yr[c0 + i] = (TY)intvit_clamp(intvit_requant(ex[i] * factor, m, e),   \
                                                  lo, hi);                                \
            }                                                                             \
        }                                                                                 \
    }

/* --- LayerNorm row ----------------------------------------------------------------------
 * Per row q of C signed in_bits-bit values (intvit.approx.rows.layernorm_int):
 *   mean = round_div(sum q, C); ys = floor_shift(q - mean, var_shift);
 *   var = sum ys^2; std = max(isqrt(var), 1); factor = floor((2^31 - 1) / std);
 *   z = floor_shift(ys * factor, 1)    (|ys| <= std, so |ys * factor| < 2^31)
 *   y_c = clamp(R(z_c; m_c, e_c) + beta_c, lo, hi)
 * var is summed in 64 bits (it needs more than 32 when C * max|ys|^2 >= 2^31). z fits
 * int32, so with AVX-512 the last step takes intvit_layernorm_chunk per chunk of
 * INTVIT_CHUNK values: R(z_c; m_c, e_c) on int64 lanes as intvit_requant_at, then
 * + beta_c and the clamp, 8 values a vector (the rest scalar).
 *
 * With AVX-512 F and DQ the three row passes (sum, var, z) are vectors too, each over the
 * first n rounded down to a whole vector (the count it returns; the scalar loop does the
 * rest). mean lies between the row's least and largest value, so it is a TX value.
 *   8- and 16-bit TX, 16 int32 lanes: |q| <= 2^15, so a run of INTVIT_LAYERNORM_RUN =
 *     2^15 values sums to |s| <= 2^30 in int32 lanes (and their total), added to the
 *     int64 total after each run; |q - mean| <= 2^16 - 1 fits a lane, and the arithmetic
 *     right shift (vpsrad) is floor_shift.
 *   int32 TX, 8 int64 lanes: q and q - mean (33 bits) in int64, vpsraq the floor.
 *   ys^2 by vpmuldq (the low 32 bits of an int64 lane, signed, times themselves: an exact
 *   int64), added up in int64 lanes (every partial sum <= var). |ys| < 2^31 wherever
 *   layernorm_int accepts the row: its var bound C * Y^2 < 2^63 (Y >= max |ys|) gives
 *   Y < 2^31 for C >= 2, and C = 1 has ys = 0.
 *   z: ys * factor in int32 lanes (vpmulld; < 2^31 as above), or vpmuldq for int32 TX,
 *   then an arithmetic shift by 1.
 * With AVX2 alone (no AVX-512 F) the chunk and the passes of 8- and 16-bit TX take 8
 * int32 lanes the same way.
 * Every sum is exact, so the integers equal the scalar loop's in any order.
 */
#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512F__)
/* out[c] = clamp(R(z[c]; m[c], e[c]) + beta[c], lo, hi) for c < the returned count (n
 * rounded down to 8). */
static inline int32_t intvit_layernorm_chunk(int32_t n, const int32_t *z, const int32_t *m,
                                             const int8_t *e, const int32_t *beta,
                                             int32_t lo, int32_t hi, int32_t *out) {
    __m512i vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);
    int32_t c;
    for (c = 0; c + 8 <= n; c += 8) {
        __m512i v = _mm512_add_epi64(intvit_requant_at(z, m, e, 1, c), intvit_load_v8(beta + c));
        v = _mm512_min_epi64(_mm512_max_epi64(v, vlo), vhi);
        _mm256_storeu_si256((__m256i *)(out + c), _mm512_cvtepi64_epi32(v));
    }
    return c;
}
#elif defined(INTVIT_HAVE_AVX2)
/* As with AVX-512, 8 values a step in two vectors of int64 halves (beta sign-extended by
 * vpmuldq with 1). */
static inline int32_t intvit_layernorm_chunk(int32_t n, const int32_t *z, const int32_t *m,
                                             const int8_t *e, const int32_t *beta,
                                             int32_t lo, int32_t hi, int32_t *out) {
    __m256i vlo = _mm256_set1_epi64x(lo), vhi = _mm256_set1_epi64x(hi);
    __m256i one = _mm256_set1_epi64x(1);
    int32_t c;
    for (c = 0; c + 8 <= n; c += 8) {
        __m256i even, odd, b = _mm256_loadu_si256((const __m256i *)(beta + c));
        intvit_avx2_requant_halves_at(_mm256_loadu_si256((const __m256i *)(z + c)), m, e, 1,
                                      c, &even, &odd);
        even = _mm256_add_epi64(even, _mm256_mul_epi32(b, one));
        odd = _mm256_add_epi64(odd, _mm256_mul_epi32(_mm256_srli_epi64(b, 32), one));
        _mm256_storeu_si256((__m256i *)(out + c),
                            intvit_avx2_clamp_interleave(even, odd, vlo, vhi));
    }
    return c;
}
#else
static inline int32_t intvit_layernorm_chunk(int32_t n, const int32_t *z, const int32_t *m,
                                             const int8_t *e, const int32_t *beta,
                                             int32_t lo, int32_t hi, int32_t *out) {
    (void)n; (void)z; (void)m; (void)e; (void)beta; (void)lo; (void)hi; (void)out;
    return 0;
}
#endif

#define INTVIT_LAYERNORM_RUN 32768

/* The row passes of a T that takes no vectors: none of the row is done (the scalar loop
 * does it all). */
#define INTVIT_LAYERNORM_ROW_SCALAR(T)                                                    \
    static inline int32_t intvit_layernorm_sum_##T(int32_t n, const T *x, int64_t *total) { \
        (void)n; (void)x; (void)total;                                                    \
        return 0;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_layernorm_var_##T(int32_t n, const T *x, int64_t mean,   \
                                                   int32_t var_shift, int64_t *var) {     \
        (void)n; (void)x; (void)mean; (void)var_shift; (void)var;                         \
        return 0;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_layernorm_z_##T(int32_t n, const T *x, int64_t mean,     \
                                                 int32_t var_shift, int32_t factor,       \
                                                 int32_t *z) {                            \
        (void)n; (void)x; (void)mean; (void)var_shift; (void)factor; (void)z;             \
        return 0;                                                                         \
    }

#if defined(INTVIT_HAVE_AVX2) && defined(__AVX512F__) && defined(__AVX512DQ__)
/* acc + ys_2i^2 + ys_2i+1^2 per int64 lane (vpmuldq on the even, then the odd int32s). */
static inline __m512i intvit_square_sum_v16(__m512i acc, __m512i ys) {
    __m512i odd = _mm512_srli_epi64(ys, 32);
    return _mm512_add_epi64(_mm512_add_epi64(acc, _mm512_mul_epi32(ys, ys)),
                            _mm512_mul_epi32(odd, odd));
}

/* The row passes of an 8- or 16-bit T, 16 int32 lanes: sum_T: *total += sum x_i;
 * var_T: *var += sum ys_i^2; z_T: z[i] = floor_shift(ys_i * factor, 1). */
#define INTVIT_DEFINE_LAYERNORM_ROW(T)                                                    \
    static inline __m512i intvit_layernorm_ys16_##T(const T *x, __m512i mean, __m128i k) { \
        return _mm512_sra_epi32(_mm512_sub_epi32(intvit_widen16_##T(x), mean), k);        \
    }                                                                                     \
    static inline int32_t intvit_layernorm_sum_##T(int32_t n, const T *x, int64_t *total) { \
        int32_t i = 0, end, full = n - n % 16;                                            \
        while (i < full) {                                                                \
            __m512i s = _mm512_setzero_si512();                                           \
            end = full - i < INTVIT_LAYERNORM_RUN ? full : i + INTVIT_LAYERNORM_RUN;      \
            for (; i < end; i += 16) s = _mm512_add_epi32(s, intvit_widen16_##T(x + i));  \
            *total += _mm512_reduce_add_epi32(s);                                         \
        }                                                                                 \
        return full;                                                                      \
    }                                                                                     \
    static inline int32_t intvit_layernorm_var_##T(int32_t n, const T *x, int64_t mean,   \
                                                   int32_t var_shift, int64_t *var) {     \
        __m512i mv = _mm512_set1_epi32((int32_t)mean), acc = _mm512_setzero_si512();      \
        __m128i k = _mm_cvtsi32_si128(var_shift);                                         \
        int32_t i;                                                                        \
        for (i = 0; i + 16 <= n; i += 16)                                                 \
            acc = intvit_square_sum_v16(acc, intvit_layernorm_ys16_##T(x + i, mv, k));    \
        *var += _mm512_reduce_add_epi64(acc);                                             \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_layernorm_z_##T(int32_t n, const T *x, int64_t mean,     \
                                                 int32_t var_shift, int32_t factor,       \
                                                 int32_t *z) {                            \
        __m512i mv = _mm512_set1_epi32((int32_t)mean), f = _mm512_set1_epi32(factor);     \
        __m128i k = _mm_cvtsi32_si128(var_shift);                                         \
        int32_t i;                                                                        \
        for (i = 0; i + 16 <= n; i += 16)                                                 \
            _mm512_storeu_si512((void *)(z + i), _mm512_srai_epi32(_mm512_mullo_epi32(    \
                intvit_layernorm_ys16_##T(x + i, mv, k), f), 1));                         \
        return i;                                                                         \
    }
INTVIT_DEFINE_LAYERNORM_ROW(int8_t)
INTVIT_DEFINE_LAYERNORM_ROW(uint8_t)
INTVIT_DEFINE_LAYERNORM_ROW(int16_t)

/* The row passes of int32 values, 8 int64 lanes (as INTVIT_DEFINE_LAYERNORM_ROW). */
static inline __m512i intvit_layernorm_ys8(const int32_t *x, __m512i mean, __m128i k) {
    return _mm512_sra_epi64(_mm512_sub_epi64(intvit_load_v8(x), mean), k);
}
static inline int32_t intvit_layernorm_sum_int32_t(int32_t n, const int32_t *x,
                                                   int64_t *total) {
    __m512i s = _mm512_setzero_si512();
    int32_t i;
    for (i = 0; i + 8 <= n; i += 8) s = _mm512_add_epi64(s, intvit_load_v8(x + i));
    *total += _mm512_reduce_add_epi64(s);
    return i;
}
static inline int32_t intvit_layernorm_var_int32_t(int32_t n, const int32_t *x, int64_t mean,
                                                   int32_t var_shift, int64_t *var) {
    __m512i mv = _mm512_set1_epi64(mean), acc = _mm512_setzero_si512();
    __m128i k = _mm_cvtsi32_si128(var_shift);
    int32_t i;
    for (i = 0; i + 8 <= n; i += 8) {
        __m512i ys = intvit_layernorm_ys8(x + i, mv, k);
        acc = _mm512_add_epi64(acc, _mm512_mul_epi32(ys, ys));
    }
    *var += _mm512_reduce_add_epi64(acc);
    return i;
}
static inline int32_t intvit_layernorm_z_int32_t(int32_t n, const int32_t *x, int64_t mean,
                                                 int32_t var_shift, int32_t factor,
                                                 int32_t *z) {
    __m512i mv = _mm512_set1_epi64(mean), f = _mm512_set1_epi64(factor);
    __m128i k = _mm_cvtsi32_si128(var_shift);
    int32_t i;
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i *)(z + i), _mm512_cvtepi64_epi32(_mm512_srai_epi64(
            _mm512_mul_epi32(intvit_layernorm_ys8(x + i, mv, k), f), 1)));
    return i;
}
#elif defined(INTVIT_HAVE_AVX2) && !defined(__AVX512F__)
/* The row passes of an 8- or 16-bit T on AVX2, 8 int32 lanes, as with AVX-512 (the same
 * runs and bounds; ys^2 by vpmuldq on the even, then the odd int32s); int32 T stays
 * scalar. */
#define INTVIT_DEFINE_LAYERNORM_ROW(T)                                                    \
    static inline __m256i intvit_layernorm_ys8_##T(const T *x, __m256i mean, __m128i k) { \
        return _mm256_sra_epi32(_mm256_sub_epi32(intvit_widen8_##T(x), mean), k);         \
    }                                                                                     \
    static inline int32_t intvit_layernorm_sum_##T(int32_t n, const T *x, int64_t *total) { \
        int32_t i = 0, end, full = n - n % 8;                                             \
        while (i < full) {                                                                \
            __m256i s = _mm256_setzero_si256();                                           \
            end = full - i < INTVIT_LAYERNORM_RUN ? full : i + INTVIT_LAYERNORM_RUN;      \
            for (; i < end; i += 8) s = _mm256_add_epi32(s, intvit_widen8_##T(x + i));    \
            *total += intvit_avx2_sum32(s);                                               \
        }                                                                                 \
        return full;                                                                      \
    }                                                                                     \
    static inline int32_t intvit_layernorm_var_##T(int32_t n, const T *x, int64_t mean,   \
                                                   int32_t var_shift, int64_t *var) {     \
        __m256i mv = _mm256_set1_epi32((int32_t)mean), acc = _mm256_setzero_si256();      \
        __m128i k = _mm_cvtsi32_si128(var_shift);                                         \
        int32_t i;                                                                        \
        for (i = 0; i + 8 <= n; i += 8) {                                                 \
            __m256i ys = intvit_layernorm_ys8_##T(x + i, mv, k);                          \
            __m256i odd = _mm256_srli_epi64(ys, 32);                                      \
            acc = _mm256_add_epi64(_mm256_add_epi64(acc, _mm256_mul_epi32(ys, ys)),       \
                                   _mm256_mul_epi32(odd, odd));                           \
        }                                                                                 \
        *var += intvit_avx2_sum64(acc);                                                   \
        return i;                                                                         \
    }                                                                                     \
    static inline int32_t intvit_layernorm_z_##T(int32_t n, const T *x, int64_t mean,     \
                                                 int32_t var_shift, int32_t factor,       \
                                                 int32_t *z) {                            \
        __m256i mv = _mm256_set1_epi32((int32_t)mean), f = _mm256_set1_epi32(factor);     \
        __m128i k = _mm_cvtsi32_si128(var_shift);                                         \
        int32_t i;                                                                        \
        for (i = 0; i + 8 <= n; i += 8)                                                   \
            _mm256_storeu_si256((__m256i *)(z + i), _mm256_srai_epi32(_mm256_mullo_epi32( \
                intvit_layernorm_ys8_##T(x + i, mv, k), f), 1));                          \
        return i;                                                                         \
    }
INTVIT_DEFINE_LAYERNORM_ROW(int8_t)
INTVIT_DEFINE_LAYERNORM_ROW(uint8_t)
INTVIT_DEFINE_LAYERNORM_ROW(int16_t)
INTVIT_LAYERNORM_ROW_SCALAR(int32_t)
#else
INTVIT_LAYERNORM_ROW_SCALAR(int8_t)
INTVIT_LAYERNORM_ROW_SCALAR(uint8_t)
INTVIT_LAYERNORM_ROW_SCALAR(int16_t)
INTVIT_LAYERNORM_ROW_SCALAR(int32_t)
#endif

#define INTVIT_DECLARE_LAYERNORM(NAME, TX, TY)                                            \
    void NAME(int32_t rows, int32_t C, const TX *x, int32_t var_shift, const int32_t *m,  \
              const int8_t *e, const int32_t *beta, int32_t lo, int32_t hi, TY *y)

#define INTVIT_DEFINE_LAYERNORM(NAME, TX, TY)                                             \
    INTVIT_DECLARE_LAYERNORM(NAME, TX, TY) {                                              \
        int32_t r, c;                                                                     \
        INTVIT_OMP("omp parallel for schedule(static) private(c) if((int64_t)rows * C >= INTVIT_OMP_MIN_WORK)") \
        for (r = 0; r < rows; r++) {                                                      \
            const TX *xr = x + (int64_t)r * C;                                            \
            TY *yr = y + (int64_t)r * C;                                                  \
            int64_t total = 0, var = 0, std, mean;                                        \
            int32_t factor, c0, n, done, z[INTVIT_CHUNK], t[INTVIT_CHUNK];                \
            for (c = intvit_layernorm_sum_##TX(C, xr, &total); c < C; c++) total += xr[c]; \
            mean = intvit_round_div(total, C);                                            \
            for (c = intvit_layernorm_var_##TX(C, xr, mean, var_shift, &var); c < C; c++) { \
                int64_t ys = intvit_floor_shift(xr[c] - mean, var_shift);                 \
                var += ys * ys;                                                           \
            }                                                                             \
            std = intvit_isqrt(var);                                                      \
            factor = (int32_t)(INT32_MAX / (std > 1 ? std : 1));                          \
            for (c0 = 0; c0 < C; c0 += INTVIT_CHUNK) {                                    \
                n = C - c0 < INTVIT_CHUNK ? C - c0 : INTVIT_CHUNK;                        \
                for (c = intvit_layernorm_z_##TX(n, xr + c0, mean, var_shift, factor, z); \
                     c < n; c++) {                                                        \
                    int32_t ys = (int32_t)intvit_floor_shift(xr[c0 + c] - mean, var_shift); \
                    z[c] = (int32_t)intvit_floor_shift((int64_t)(ys * factor), 1);        \
                }                                                                         \
                done = intvit_layernorm_chunk(n, z, m + c0, e + c0, beta + c0, lo, hi, t); \
                for (c = 0; c < done; c++) yr[c0 + c] = (TY)t[c];                         \
                for (; c < n; c++)                                                        \
                    yr[c0 + c] = (TY)intvit_clamp(intvit_requant(z[c], m[c0 + c], e[c0 + c]) \
                                                  + beta[c0 + c], lo, hi);                \
            }                                                                             \
        }                                                                                 \
    }

/* --- index moves ------------------------------------------------------------------------
 * Copy a box of up to 6 dimensions: dst[sum i_d * ds_d] = src[sum i_d * ss_d] for
 * 0 <= i_d < shape_d (transpose, take, slice, concat, roll, pad are boxes of this). Boxes
 * of at least INTVIT_OMP_MIN_WORK values split their four outer dimensions (leading ones
 * where the rank is lower) over OpenMP threads (each value is written once, so the
 * threads change none). Where the last dimension is contiguous on both sides (ss_5 =
 * ds_5 = 1, as when a transpose keeps the last axis) its loop runs on unit strides, which
 * the compiler vectorizes.
 */
#define INTVIT_DECLARE_COPY(NAME, TS, TD)                                                 \
    void NAME(const int32_t *shape, const TS *src, const int32_t *ss, TD *dst,            \
              const int32_t *ds)

#define INTVIT_DEFINE_COPY(NAME, TS, TD)                                                  \
    INTVIT_DECLARE_COPY(NAME, TS, TD) {                                                   \
        int32_t i0, i1, i2, i3, i4, i5;                                                   \
        int64_t total = (int64_t)shape[0] * shape[1] * shape[2] * shape[3] * shape[4] * shape[5]; \
        (void)total;                                                                      \
        INTVIT_OMP("omp parallel for collapse(4) private(i4, i5) schedule(static) if(total >= INTVIT_OMP_MIN_WORK)") \
        for (i0 = 0; i0 < shape[0]; i0++)                                                 \
        for (i1 = 0; i1 < shape[1]; i1++)                                                 \
        for (i2 = 0; i2 < shape[2]; i2++)                                                 \
        for (i3 = 0; i3 < shape[3]; i3++)                                                 \
        for (i4 = 0; i4 < shape[4]; i4++) {                                               \
            const TS *s = src + (int64_t)i0 * ss[0] + (int64_t)i1 * ss[1]                 \
                + (int64_t)i2 * ss[2] + (int64_t)i3 * ss[3] + (int64_t)i4 * ss[4];        \
            TD *d = dst + (int64_t)i0 * ds[0] + (int64_t)i1 * ds[1]                       \
                + (int64_t)i2 * ds[2] + (int64_t)i3 * ds[3] + (int64_t)i4 * ds[4];        \
            if (ss[5] == 1 && ds[5] == 1)                                                 \
                for (i5 = 0; i5 < shape[5]; i5++) d[i5] = (TD)s[i5];                      \
            else                                                                          \
                for (i5 = 0; i5 < shape[5]; i5++) d[(int64_t)i5 * ds[5]] = (TD)s[(int64_t)i5 * ss[5]]; \
        }                                                                                 \
    }

/* y[i] = cond[c(i)] ? fill : x[i] over a contiguous 6-d shape; cond is broadcast by its
 * strides cs (0 along broadcast dimensions). Shapes of at least INTVIT_OMP_MIN_WORK values
 * split their four outer dimensions (leading ones where the rank is lower) over OpenMP
 * threads (each value stands alone). */
#define INTVIT_DECLARE_WHERE(NAME, TX, TY)                                                \
    void NAME(const int32_t *shape, const TX *x, const uint8_t *cond, const int32_t *cs,  \
              int32_t fill, TY *y)

#define INTVIT_DEFINE_WHERE(NAME, TX, TY)                                                 \
    INTVIT_DECLARE_WHERE(NAME, TX, TY) {                                                  \
        int32_t i0, i1, i2, i3, i4, i5;                                                   \
        int64_t total = (int64_t)shape[0] * shape[1] * shape[2] * shape[3] * shape[4] * shape[5]; \
        (void)total;                                                                      \
        INTVIT_OMP("omp parallel for collapse(4) private(i4, i5) schedule(static) if(total >= INTVIT_OMP_MIN_WORK)") \
        for (i0 = 0; i0 < shape[0]; i0++)                                                 \
        for (i1 = 0; i1 < shape[1]; i1++)                                                 \
        for (i2 = 0; i2 < shape[2]; i2++)                                                 \
        for (i3 = 0; i3 < shape[3]; i3++)                                                 \
        for (i4 = 0; i4 < shape[4]; i4++) {                                               \
            const uint8_t *c = cond + (int64_t)i0 * cs[0] + (int64_t)i1 * cs[1]           \
                + (int64_t)i2 * cs[2] + (int64_t)i3 * cs[3] + (int64_t)i4 * cs[4];        \
            int64_t at = ((((((int64_t)i0 * shape[1] + i1) * shape[2] + i2) * shape[3] + i3) \
                          * shape[4] + i4) * shape[5]);                                   \
            for (i5 = 0; i5 < shape[5]; i5++)                                             \
                y[at + i5] = c[(int64_t)i5 * cs[5]] ? (TY)fill : (TY)x[at + i5];          \
        }                                                                                 \
    }

/* y[o][i] = sum_l x[o][l][i] (outer x len x inner; the sum is proven to fit 32 bits). */
#define INTVIT_DECLARE_SUM(NAME, TX, TY)                                                  \
    void NAME(int32_t outer, int32_t len, int32_t inner, const TX *x, TY *y)

#define INTVIT_DEFINE_SUM(NAME, TX, TY)                                                   \
    INTVIT_DECLARE_SUM(NAME, TX, TY) {                                                    \
        int32_t o, l, i;                                                                  \
        for (o = 0; o < outer; o++)                                                       \
            for (i = 0; i < inner; i++) {                                                 \
                int32_t s = 0;                                                            \
                for (l = 0; l < len; l++) s += x[((int64_t)o * len + l) * inner + i];     \
                y[(int64_t)o * inner + i] = (TY)s;                                        \
            }                                                                             \
    }

#endif /* INTVIT_KERNELS_H */
