"""``intvit bench``: the latency table of :mod:`intvit.engine.bench`, judged against the
project's goals (:data:`TARGETS`), optionally written into the README."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from ..engine.bench import README_SECTION, Goal
from .common import write_json

# The engine issue's goals for the fastest integer-only engine, at every batch measured:
# DeiT-S/B 1.5x faster than ONNX Runtime's dynamic int8 and 4x faster than PyTorch FP32;
# DeiT-T and Swin-T never slower than ONNX Runtime's dynamic int8.
TARGETS = {"deit_small": Goal(vs_ort_int8=0.67, vs_fp32=4.0),
           "deit_base": Goal(vs_ort_int8=0.67, vs_fp32=4.0),
           "deit_tiny": Goal(vs_ort_int8=1.0), "swin_tiny": Goal(vs_ort_int8=1.0)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine.bench import MODELS
    from ..engine.engines import ENGINES

    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated (default {','.join(MODELS)})")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"integer engines to time (default {','.join(ENGINES)})")
    p.add_argument("--family", default="ivit", help="approximation family (default ivit)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1,
                   help="time every row this many times, the rounds interleaved across the "
                        "engines, and keep each row's fastest round (a shared host slows "
                        "down by phases; default 1)")
    p.add_argument("--profile", action="store_true",
                   help="also print the int engine's time by op class (int8 products, "
                        "requantization, GELU, Softmax, LayerNorm, quantization, data "
                        "movement), and the c and tvm engines' when they are timed (tvm: "
                        "and installed)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--update-readme", metavar="README", nargs="?", const="README.md",
                   help="write the table between the README's latency markers")
    p.add_argument("--readme-section", default=README_SECTION, metavar="NAME",
                   help="the markers <!-- NAME:start --> and <!-- NAME:end --> that "
                        "--update-readme writes between (default latency: the AVX-512 "
                        "host's table; latency-avx2: an AVX2-only host's)")


def run(args: argparse.Namespace) -> int:
    """0 when every integer engine gave the model's logits exactly, 1 otherwise."""
    import torch

    from ..tables import replace_between
    from ..engine.bench import markdown, readme_markers, require_readme_markers, run_bench

    markers = readme_markers(args.readme_section)
    if args.update_readme:
        require_readme_markers(Path(args.update_readme), args.readme_section)
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    engines = [e for e in args.engines.split(",") if e]
    start = time.perf_counter()
    rows, profiles = run_bench(models, batches, engines, args.family, args.threads,
                               args.warmup, args.repeats, args.profile, args.rounds)
    rounds = (f" --rounds {args.rounds}" if args.rounds > 1 else "")
    fastest = (f", the fastest of {args.rounds} interleaved rounds" if args.rounds > 1 else "")
    header = (f"`intvit bench --models {','.join(models)} --batch-sizes "
              f"{','.join(map(str, batches))} --engines {','.join(engines)}{rounds}` "
              f"({args.family} approximations, {args.threads} threads, median of "
              f"{args.repeats} runs after {args.warmup}{fastest}; "
              f"{(time.perf_counter() - start) / 60:.1f} min in all, {torch.__version__} torch)")
    table = markdown(rows, header, TARGETS)
    print(table)
    for profile in profiles:
        print("\n" + profile)
    write_json(args.json, "bench", {"header": header, "rows": [asdict(r) for r in rows]})
    if args.update_readme:
        replace_between(args.update_readme, *markers, table)
    return 0 if all(r.exact is not False for r in rows) else 1
