"""The README written beside an exported C library."""

from __future__ import annotations

from .plan import Plan


def readme(plan: Plan, mem, in_type: str, classes: int) -> str:
    meta = plan.program.meta
    quant = meta.get("quant", {})
    c, h, w = plan.program.input_shape
    return f"""# intvit C export: {meta.get('model', {}).get('name', 'model')}

Integer-only inference of the model ({len(plan.program.nodes)} program nodes; gelu
{quant.get('gelu')}, softmax {quant.get('softmax')}, layernorm {quant.get('layernorm')}),
bit-exact with `intvit eval` and the `int` engine. C99, integer types only, no
allocation, only `<stdint.h>` and `<string.h>`.

## Memory

| what | bytes |
|---|---:|
| scratch buffer (RAM; activations reused across layers) | {mem.scratch_bytes} |
| ... of which the quantized input (`run_float` only) | {mem.input_bytes} |
| every activation in its own buffer (for comparison) | {mem.activations_bytes} |
| weights, biases, dyadic pairs, tables (`const`, flash) | {mem.weight_bytes} |

The portable matmul kernel also keeps `2 * (INTVIT_MATMUL_JB + 2) * INTVIT_MATMUL_KC`
bytes on the stack (9 KiB by default; define smaller values when compiling to lower it);
the AVX2 and AMX kernels keep a block of rows (`INTVIT_MATMUL_MC` x
`INTVIT_MATMUL_KC` or `INTVIT_VNNI_KC`, 128 KiB by default) and a 16 KiB panel per thread;
the VNNI kernel reads the rows in place and keeps a 16 KiB panel and 1.5 KiB per thread.

## Build

```sh
cc -std=c99 -O2 -c intvit_model.c intvit_weights.c intvit_kernels.c intvit_model_float.c
```

The target flags choose the products' kernel (`-march=native` for the build machine):
AMX tiles (`__AMX_INT8__`, Linux x86-64; VNNI at run time where the OS refuses the
tiles) or AVX-512 VNNI (`__AVX512VNNI__`) for the products of two 8-bit operands, AVX2,
else the portable kernel; `-DINTVIT_NO_AMX`, `-DINTVIT_NO_VNNI` or `-DINTVIT_PORTABLE` cap
it. With `-fopenmp`, `intvit_model_set_threads(n)` threads split the products, the
attention heads and the large row nodes (the logits are the same for any `n`).

## API (`intvit_model.h`)

```c
static uint8_t scratch[INTVIT_MODEL_SCRATCH_BYTES] __attribute__((aligned(16)));
int32_t logits[INTVIT_MODEL_CLASSES];
intvit_model_run_float(image, logits, scratch);   /* float image, {c} x {h} x {w} */
intvit_model_run(input, logits, scratch);         /* already quantized: {in_type} */
/* real logit k = logits[k] * intvit_model_logit_scale[k] */
```

`intvit_model_run` and everything it calls are integer-only; floating point lives in
`intvit_model_float.c` alone (the input scale and the logit scales).

## Debug build: every node's output

Compile with `-DINTVIT_DEBUG` and define
`void intvit_debug_node(int32_t node, const void *data, int32_t type, int32_t count)`:
it is called after every node, in program order, with that node's output (type 0 int8,
1 uint8, 2 int16, 3 int32). Compare with `intvit export --format golden` (node `i` is
`nodes/i_<op>.safetensors`, `output`).

## Profile build: every node's time

Compile with `-DINTVIT_PROFILE` and define `void intvit_profile_node(int32_t node)`: it
is called once each node is done (node 0, the quantization, when `intvit_model_run`
starts), in program order, so a timestamp per call gives each node's time
(`intvit bench --profile` does so by op class; a requantization fused into its product
counts as the product's time).

## Swapping kernels

The network (`intvit_model.c`) calls only the kernel functions listed in
`intvit_kernels.c`, one per line (`INTVIT_DEFINE_<KERNEL>(name, types)`): int8 matmul
with int32 accumulation, the same with the requantization of its result (`MATMUL8_RQ`:
one call for a product and the requantize node that alone reads it, writing its output
in the layout of the transpose that reads it where there is one: `layout`, see
`intvit_requant_into`; every product takes its right operand by the strides `sn`, `sk`),
requantize (with or
without residual), table look-up, softmax row, LayerNorm row, and the index moves (box
copy, where, sum). To run a kernel on your
target's library (CMSIS-NN, an HLS block, vendor intrinsics), delete its line and link
your own function with the same name and the signature of `INTVIT_DECLARE_<KERNEL>` in
`intvit_kernels.h`; the semantics of each are written above its macro. Keep them exact:
the golden vectors (`intvit export --format golden`) and the debug build check it layer
by layer.
"""
