"""How much slower is one QAT training step than one FP32 training step?

A training step is forward + loss + backward + AdamW step. The QAT model is the intvit
model after calibration, in ``train()`` (FAKE mode: fake-quantized activations and
weights, the integer GELU/Softmax/LayerNorm kernels in the forward, straight-through
gradients); the FP32 model is the same architecture with ``QuantConfig(enabled=False)``
and the same weights. Steps are interleaved (FP32, QAT, QAT, FP32, ...) so drift in the
machine's speed hits both, and the median of ``--repeats`` steps after ``--warmup``
is reported.

    python benchmarks/qat_step.py                        # deit_tiny, batch 8, ivit
    python benchmarks/qat_step.py --layer-type ppoly --json out.json
    python benchmarks/qat_step.py --profile              # where the QAT time goes

Weights are random but of a trained model's magnitude (timm's init gives activations
so small that I-ViT's integer GELU refuses them); the input is N(0, 1) images.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import os
import platform
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

try:
    from intvit.models import build_quant_model, model_config
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from intvit.models import build_quant_model, model_config
from intvit.models.init import trained_scale_init
from intvit.quant import QuantConfig, calibrate
from intvit.result_files import write_result
from intvit.tables import markdown_table

TARGET_RATIO = 3.0
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process), Linux only: how much
    CPU other processes took during a step tells a clean timing from a disturbed one."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        idle = int(fields[3]) + int(fields[4])
        busy = sum(int(v) for v in fields[:8]) - idle
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime, all threads
    except (OSError, ValueError, IndexError):
        return None


def page_faults() -> int:
    """Minor page faults of this process so far (0 where unknown): freshly mapped
    memory that the kernel had to supply, i.e. allocator churn."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


def foreign_share(before, after, seconds: float) -> float:
    """The share of the machine's CPU capacity used by other processes (0 = quiet)."""
    if before is None or after is None or seconds <= 0:
        return 0.0
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / TICKS / (seconds * (os.cpu_count() or 1)))


def build(name: str, qcfg: QuantConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_quant_model(model_config(name), qcfg)
    trained_scale_init(model)
    return model


class Stepper:
    """One model, its optimizer and loss; ``step()`` times the three phases and notes
    how busy the rest of the machine was meanwhile."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 lr: float, max_foreign: float) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.criterion = nn.CrossEntropyLoss()
        self.max_foreign = max_foreign
        self.times: dict[str, list[float]] = defaultdict(list)

    def step(self, record: bool = True) -> None:
        ticks, faults = cpu_ticks(), page_faults()
        t0 = time.perf_counter()
        loss = self.criterion(self.model(self.images), self.labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        foreign = foreign_share(ticks, cpu_ticks(), t3 - t0)
        faults = page_faults() - faults
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)}: lower --lr")
        if record:
            for key, value in (("forward", t1 - t0), ("backward", t2 - t1),
                               ("optimizer", t3 - t2), ("step", t3 - t0)):
                self.times[key].append(value * 1e3)
            self.times["foreign"].append(foreign)
            self.times["page_faults"].append(faults)

    def quiet(self) -> list[int]:
        """Steps during which other processes used at most ``max_foreign`` of the CPUs."""
        return [i for i, f in enumerate(self.times["foreign"]) if f <= self.max_foreign]

    def clean(self) -> list[int]:
        """The quiet steps; all steps when none was that quiet."""
        return self.quiet() or list(range(len(self.times["step"])))

    def median(self, key: str = "step") -> float:
        return statistics.median(self.times[key][i] for i in self.clean())

    def minimum(self, key: str = "step") -> float:
        return min(self.times[key])


def approximations(layer_type: str, layernorm: str | None) -> dict[str, str]:
    """GELU/Softmax/LayerNorm names for a layer type; a family without a LayerNorm
    (ppoly) takes ``layernorm`` (default ivit), as ``intvit train --layernorm`` would."""
    from intvit.approx import REGISTRY
    from intvit.approx.registry import parse_name

    names = {op: layer_type for op in ("gelu", "softmax", "layernorm")}
    if layernorm:
        names["layernorm"] = layernorm
    elif parse_name(layer_type)[0] not in REGISTRY["layernorm"]:
        names["layernorm"] = "ivit"
    return names


def describe(names: dict[str, str]) -> str:
    """``ivit``, or ``ppoly (LayerNorm ivit)``, or ``gelu/softmax/layernorm``."""
    if names["gelu"] != names["softmax"]:
        return "/".join(names.values())
    if names["layernorm"] != names["gelu"]:
        return f"{names['gelu']} (LayerNorm {names['layernorm']})"
    return names["gelu"]


def make_pair(args: argparse.Namespace, layer_type: str) -> tuple[Stepper, Stepper]:
    cfg = model_config(args.model)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, cfg.in_chans, cfg.img_size, cfg.img_size)
    images = torch.randn(shape, generator=g)
    labels = torch.randint(cfg.num_classes, (args.batch_size,), generator=g)
    fp32 = build(args.model, QuantConfig(enabled=False))
    qat = build(args.model, QuantConfig(**approximations(layer_type, args.layernorm)))
    calib = [(torch.randn(shape, generator=g), None) for _ in range(args.calib_batches)]
    calibrate(qat, calib, len(calib), progress=False)
    fp32.train()
    qat.train()  # FAKE mode: fake quantization, integer kernels, straight-through
    return (Stepper(fp32, images, labels, args.lr, args.max_foreign),
            Stepper(qat, images, labels, args.lr, args.max_foreign))


def measure(args: argparse.Namespace, layer_type: str) -> dict:
    fp32, qat = make_pair(args, layer_type)
    for i in range(args.warmup + args.repeats):
        first, second = (fp32, qat) if i % 2 == 0 else (qat, fp32)
        first.step(record=i >= args.warmup)
        second.step(record=i >= args.warmup)
    names = approximations(layer_type, args.layernorm)
    row = {"model": args.model, "layer_type": describe(names), "approximations": names,
           "batch": args.batch_size,
           "fp32_ms": fp32.median(), "qat_ms": qat.median(),
           "phases_ms": {name: {k: s.median(k) for k in ("forward", "backward", "optimizer",
                                                          "page_faults")}
                         for name, s in (("fp32", fp32), ("qat", qat))},
           "fp32_min_ms": fp32.minimum(), "qat_min_ms": qat.minimum(),
           "clean_steps": {"fp32": len(fp32.quiet()), "qat": len(qat.quiet())},
           "repeats": args.repeats,
           "steps": {name: dict(s.times) for name, s in (("fp32", fp32), ("qat", qat))}}
    row["ratio"] = row["qat_ms"] / row["fp32_ms"]
    row["ratio_of_minima"] = row["qat_min_ms"] / row["fp32_min_ms"]
    row["pass"] = row["ratio"] <= TARGET_RATIO
    if args.profile:
        row["profile"] = profile(qat, fp32, args)
    return row


# --- where the time goes --------------------------------------------------------------

def module_times(stepper: Stepper, steps: int) -> dict[str, float]:
    """Forward time (ms per step, median over ``steps``) of each class of quantized
    module (they do not nest), from forward hooks."""
    from intvit.quant import QuantModule

    per_step: list[dict[str, float]] = []
    handles, starts = [], {}

    def pre(mod, inputs):
        starts[id(mod)] = time.perf_counter()

    def post(mod, inputs, output):
        name = type(mod).__name__
        per_step[-1][name] = per_step[-1].get(name, 0.0) + time.perf_counter() - starts.pop(id(mod))

    for module in stepper.model.modules():
        if isinstance(module, QuantModule):
            handles += [module.register_forward_pre_hook(pre),
                        module.register_forward_hook(post)]
    try:
        for _ in range(steps):
            per_step.append({})
            stepper.step(record=False)
    finally:
        for handle in handles:
            handle.remove()
    names = sorted(per_step[0], key=lambda k: -per_step[0][k])
    return {k: statistics.median(step.get(k, 0.0) for step in per_step) * 1e3 for k in names}


def torch_ops(stepper: Stepper, steps: int, top: int) -> list[dict]:
    """The aten ops with the largest self CPU time (ms per step), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper.step(record=False)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / steps,
             "calls": e.count // steps} for e in events[:top]]


def python_functions(stepper: Stepper, steps: int, top: int) -> list[dict]:
    """intvit's own Python functions by cumulative time (ms per step), from cProfile."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        stepper.step(record=False)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    rows = []
    for (path, line, func), (_, calls, _, cumulative, _) in stats.items():
        if f"{os.sep}intvit{os.sep}" in path:
            short = path.split(f"{os.sep}intvit{os.sep}", 1)[1]
            rows.append({"function": f"{short}:{line}({func})",
                         "cum_ms": cumulative * 1e3 / steps, "calls": calls // steps})
    return sorted(rows, key=lambda r: -r["cum_ms"])[:top]


def profile(qat: Stepper, fp32: Stepper, args: argparse.Namespace) -> dict:
    steps = args.profile_steps
    ticks, start = cpu_ticks(), time.perf_counter()
    result = {"qat_modules_ms": module_times(qat, steps),
              "fp32_modules_ms": module_times(fp32, steps),
              "qat_ops": torch_ops(qat, steps, args.top),
              "fp32_ops": torch_ops(fp32, steps, args.top),
              "qat_python": python_functions(qat, steps, args.top)}
    result["foreign"] = foreign_share(ticks, cpu_ticks(), time.perf_counter() - start)
    return result


# --- report ---------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    return markdown_table(
        ["model", "layer type", "batch", "FP32 step ms", "QAT step ms", "ratio (QAT/FP32)",
         "target", "pass"],
        [[r["model"], r["layer_type"], r["batch"], f"{r['fp32_ms']:.1f}", f"{r['qat_ms']:.1f}",
          f"{r['ratio']:.2f}x", f"{TARGET_RATIO:g}x", "pass" if r["pass"] else "FAIL"]
         for r in rows], align="llrrrrrl")


def stability_table(rows: list[dict]) -> str:
    return markdown_table(
        ["layer type", "clean steps FP32 / QAT", "FP32 min ms", "QAT min ms",
         "ratio of minima"],
        [[r["layer_type"],
          f"{r['clean_steps']['fp32']} / {r['clean_steps']['qat']} of {r['repeats']}",
          f"{r['fp32_min_ms']:.1f}", f"{r['qat_min_ms']:.1f}", f"{r['ratio_of_minima']:.2f}x"]
         for r in rows], align="llrrr")


def phase_table(rows: list[dict]) -> str:
    return markdown_table(
        ["layer type", "model", "forward ms", "backward ms", "optimizer ms",
         "page faults per step"],
        [[r["layer_type"], name.upper(), f"{p['forward']:.1f}", f"{p['backward']:.1f}",
          f"{p['optimizer']:.1f}", f"{p['page_faults']:.0f}"]
         for r in rows for name, p in ((n, r["phases_ms"][n]) for n in ("fp32", "qat"))],
        align="llrrrr")


def profile_report(row: dict) -> str:
    p = row["profile"]
    out = [f"\n### Profile: {row['model']}, {row['layer_type']}, batch {row['batch']} "
           f"(per step; other processes used {100 * p['foreign']:.0f}% of the CPUs meanwhile)"
           f"\n", "QAT forward by module class (hooks; FP32 for comparison):\n",
           markdown_table(["module", "QAT ms", "FP32 ms"],
                          [[name, f"{ms:.1f}", f"{p['fp32_modules_ms'].get(name, 0.0):.1f}"]
                           for name, ms in p["qat_modules_ms"].items()], align="lrr")]
    for label, key in (("QAT", "qat_ops"), ("FP32", "fp32_ops")):
        out += [f"\n{label} top ops by self CPU time (torch.profiler, forward + backward "
                f"+ optimizer):\n",
                markdown_table(["op", "self ms", "calls"],
                               [[e["op"], f"{e['self_ms']:.1f}", e["calls"]] for e in p[key]],
                               align="lrr")]
    out += ["\nQAT: intvit functions by cumulative time (cProfile; nested calls overlap):\n",
            markdown_table(["function", "cum ms", "calls"],
                           [[e["function"], f"{e['cum_ms']:.1f}", e["calls"]]
                            for e in p["qat_python"]], align="lrr")]
    return "\n".join(out)


def source_version() -> str | None:
    """The checkout's commit (read-only ``git rev-parse``), to tie numbers to code."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layer-type", default="ivit",
                   help="GELU/Softmax/LayerNorm approximation; a comma list runs each")
    p.add_argument("--layernorm", help="LayerNorm approximation instead of the layer "
                                       "type's (default: the layer type's, or ivit for "
                                       "families without one, such as ppoly)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--calib-batches", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="also report where QAT time goes")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--max-foreign", type=float, default=0.1,
                   help="ignore steps during which other processes used more than this "
                        "share of the CPUs (a shared machine); 1 keeps every step")
    p.add_argument("--top", type=int, default=12, help="rows per profile table")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(args, lt.strip()) for lt in args.layer_type.split(",")]
    print(table(rows))
    print("\nMedian phases per step:\n")
    print(phase_table(rows))
    print(f"\nMedians use the steps during which other processes took at most "
          f"{100 * args.max_foreign:.0f}% of the CPUs (all steps if none was that quiet):\n")
    print(stability_table(rows))
    for row in rows:
        if not row["pass"]:
            print(f"\n{row['layer_type']}: QAT/FP32 = {row['ratio']:.2f}x, "
                  f"{row['ratio'] / TARGET_RATIO:.2f}x the {TARGET_RATIO:g}x target "
                  f"({row['qat_ms'] - TARGET_RATIO * row['fp32_ms']:.0f} ms per step over)")
        if args.profile:
            print(profile_report(row))
    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.platform(), "processor": platform.processor(),
                "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "torch": torch.__version__, "commit": source_version(),
                "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                "command": " ".join(sys.argv)}
        write_result(args.json, "qat-step-benchmark", {"meta": meta, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
