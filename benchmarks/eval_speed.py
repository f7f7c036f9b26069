"""Evaluation speed: FP32 against the integer model and every integer engine, one run.

Builds the named model (default ``deit_small``, 224x224) with trained-like random weights,
calibrates it on synthetic images, and evaluates the same synthetic validation images
with :func:`intvit.evaluation.evaluate` (the loop ``intvit eval`` runs) through:

- ``fp32``: the float timm twin of the model (the baseline);
- ``model``: the eval-mode integer model (``intvit eval --engine model``);
- every engine this machine can build (``int``, ``onnx``, ``tvm``, ``c``), each built once
  from the exported program (its build seconds in the table);

at batch 8 and 32, and prints a table of images/s, the batch-32/batch-8 rate per image
(below 1: slower per image at the larger batch) and the rate against FP32 at batch 32.
``auto`` marks the engine ``intvit eval --engine auto`` chooses here. Every engine's
logits are checked equal to the model's on the first batch. ``--update-readme`` puts the
table into the README between the markers of ``--readme-section`` (checked before the
run); ``--json FILE`` writes the rows.

    python benchmarks/eval_speed.py                       # about 10 minutes on 2 cores
    python benchmarks/eval_speed.py --model deit_tiny --images 64
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

try:
    import intvit  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch.utils.data import DataLoader, TensorDataset

from intvit.tables import markdown_table, replace_between
from intvit.arith.matmul import cpu_has_int8_dot
from intvit.engine import export_program
from intvit.engine.bench import require_readme_markers
from intvit.engine.engines import ENGINES, fastest_engine, make_engine, unavailable
from intvit.evaluation import evaluate
from intvit.models import build_quant_model, model_config
from intvit.models.init import trained_scale_init
from intvit.models.registry import float_twin
from intvit.quant import Mode, QuantConfig
from intvit.result_files import write_result

README_SECTION = "eval-speed"  # the AVX-512 host's table; eval-speed-avx2: an AVX2 host's
BATCHES = (8, 32)


def calibrated_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_quant_model(model_config(name), QuantConfig())
    trained_scale_init(model)
    model.set_mode(Mode.CALIBRATE)
    size = model.cfg.img_size
    with torch.no_grad():
        model(torch.randn(8, model.cfg.in_chans, size, size))
    return model.eval()


def loader(images: torch.Tensor, batch: int) -> DataLoader:
    labels = torch.zeros(images.shape[0], dtype=torch.int64)
    return DataLoader(TensorDataset(images, labels), batch_size=batch)


def rates(runner, images: torch.Tensor, desc: str) -> dict[int, float]:
    """images/s of ``evaluate`` at each batch size, after one warm-up batch."""
    out = {}
    for batch in BATCHES:
        with torch.no_grad():
            runner(images[:batch])
            out[batch] = evaluate(runner, loader(images, batch), desc=f"{desc} b{batch}")\
                .images_per_s
        print(f"{desc}: batch {batch}: {out[batch]:.2f} images/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--images", type=int, default=64,
                        help="validation images per batch size (a multiple of 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated engines to measure (default: all buildable)")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--readme-section", default=README_SECTION, metavar="NAME",
                        help="the README markers <!-- NAME:start --> and <!-- NAME:end --> "
                             "that --update-readme writes between (default eval-speed: the "
                             "AVX-512 host's table; eval-speed-avx2: an AVX2-only host's)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if args.update_readme:
        markers = require_readme_markers(readme, args.readme_section)
    torch.set_num_threads(args.threads)
    model = calibrated_model(args.model)
    size = model.cfg.img_size
    images = torch.randn(args.images, model.cfg.in_chans, size, size,
                         generator=torch.Generator().manual_seed(1))
    rows: list[tuple[str, dict[int, float], float | None]] = []
    rows.append(("fp32 (timm float twin)", rates(float_twin(model), images, "fp32"), None))
    rows.append(("model (eval-mode integer model)", rates(model, images, "model"), None))
    started = time.perf_counter()
    program = export_program(model, images[:2])
    export_s = time.perf_counter() - started
    want = model.forward_int(images[:BATCHES[0]]).value
    auto = fastest_engine()
    for kind in args.engines.split(","):
        why = unavailable(kind)
        if why:
            print(f"{kind}: skipped ({why})")
            continue
        started = time.perf_counter()
        engine = make_engine(kind, program, threads=args.threads)
        build_s = time.perf_counter() - started
        if not torch.equal(engine(images[:BATCHES[0]]), want):
            raise SystemExit(f"engine {kind} differs from the model: not bit-exact")
        label = f"{kind}" + (" (auto)" if kind == auto else "")
        rows.append((label, rates(engine, images, kind), build_s))
    table = markdown(args, rows, export_s)
    print(table)
    if args.json:
        write_result(args.json, "eval-speed-benchmark", results(args, rows, export_s))
    if args.update_readme:
        replace_between(readme, *markers, table)
    return 0


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def results(args: argparse.Namespace, rows, export_s: float) -> dict:
    """The run's settings and one record per row: what evaluated, images/s per batch
    size, build seconds (None: built by no engine)."""
    return {"model": args.model, "images": args.images, "threads": args.threads,
            "torch": torch.__version__, "cpu": cpu_name(), "int8_dot": cpu_has_int8_dot(),
            "export_s": export_s,
            "rows": [{"evaluated_by": label, "images_per_s": rate, "build_s": build_s}
                     for label, rate, build_s in rows]}


def markdown(args: argparse.Namespace, rows, export_s: float) -> str:
    fp32 = rows[0][1][BATCHES[-1]]
    cpu = cpu_name() + (", int8 dot products" if cpu_has_int8_dot() else
                        ", no int8 dot products (no VNNI/AMX)")
    section = ("" if args.readme_section == README_SECTION
               else f" --readme-section {args.readme_section}")
    lines = [f"`python benchmarks/eval_speed.py --model {args.model} --images {args.images} "
             f"--engines {args.engines}{section}`: "
             f"`evaluate()` images/s, {args.threads} threads, {torch.__version__}, {cpu}; "
             f"every engine's logits equal the model's; export {export_s:.0f} s.", ""]
    cells = [[label, f"{r[BATCHES[0]]:.2f}", f"{r[BATCHES[-1]]:.2f}",
              f"{r[BATCHES[-1]] / r[BATCHES[0]]:.2f}", f"{r[BATCHES[-1]] / fp32:.2f}x",
              "" if build_s is None else f"{build_s:.1f}"] for label, r, build_s in rows]
    lines.append(markdown_table(["evaluated by", "b8 images/s", "b32 images/s", "b32 / b8",
                                 "vs FP32 at b32", "build s"], cells, align="lrrrrr"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
