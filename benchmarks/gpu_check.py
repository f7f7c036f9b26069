"""The device check: one command that tells whether intvit works and how fast on a GPU.

    make gpu-check                      # or: python benchmarks/gpu_check.py [--json FILE]

Four steps, in well under 8 minutes on one H200:

1. the CUDA tests (the test files whose GPU tests skip on a CPU machine);
2. a one-process ``torchrun`` QAT run of a small model on the GPU (synthetic data);
3. CPU-vs-CUDA equality of the integer logits (a small ViT and a small Swin, and
   ``deit_small``), bit for bit;
4. the throughput table of ``deit_small`` at batch 128: FP32 eval, INT eval (the
   eval-mode integer model), FP32 and QAT training steps (forward, backward, AdamW), the
   QAT/FP32 step ratio, and the QAT step with ``--bf16`` and the fused optimizer.

On a machine without CUDA it says so and exits 0: nothing in CI depends on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
try:
    import intvit  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
from intvit.models import build_quant_model, family, model_config
from intvit.models.init import trained_scale_init
from intvit.quant import QuantConfig, calibrate
from intvit.result_files import write_result
from intvit.tables import markdown_table

CUDA_TESTS = ["tests/test_matmul_routes.py", "tests/test_device.py",
              "tests/test_integer_model.py"]
SMALL_VIT = family("vit").small
SMALL_SWIN = family("swin").small


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check (None: it can)."""
    if torch.cuda.is_available():
        return None
    return (f"no CUDA GPU on this machine (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}); run `make gpu-check` on a GPU machine")


def calibrated(name: str, overrides: dict, quant: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_quant_model(model_config(name, **overrides), QuantConfig(enabled=quant))
    trained_scale_init(model)
    if quant:
        cfg = model.cfg
        images = torch.randn(8, cfg.in_chans, cfg.img_size, cfg.img_size,
                             generator=torch.Generator().manual_seed(seed))
        calibrate(model, [(images, None)], 1, progress=False)
    return model


def integer_logits(model: nn.Module, images: torch.Tensor, device: str) -> torch.Tensor:
    """The eval-mode model's integer logits on ``device`` (a copy of the model there)."""
    import copy

    twin = copy.deepcopy(model).to(device).eval()
    with torch.no_grad():
        return twin.forward_int(images.to(device)).value.cpu()


PARITY_MODELS = (("small ViT", "custom", SMALL_VIT), ("small Swin", "custom", SMALL_SWIN),
                 ("deit_small", "deit_small", {}))


def logits_agree(device: str, batch: int = 4, models=PARITY_MODELS) -> list[dict]:
    """CPU vs ``device`` integer logits of each (label, name, overrides) model."""
    rows = []
    for label, name, overrides in models:
        model = calibrated(name, overrides)
        cfg = model.cfg
        images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size,
                             generator=torch.Generator().manual_seed(1))
        cpu, other = integer_logits(model, images, "cpu"), integer_logits(model, images, device)
        rows.append(dict(model=label, equal=bool(torch.equal(cpu, other)),
                         differing=int((cpu != other).sum())))
    return rows


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(run, batch: int, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        run()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    _synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def throughput(name: str = "deit_small", batch: int = 128, device: str = "cuda",
               warmup: int = 2, steps: int = 5, overrides: dict | None = None) -> list[dict]:
    """Images/s of FP32 eval, INT eval and the FP32, QAT and fast-QAT training steps."""
    where = torch.device(device)
    overrides = overrides or {}
    float_model = calibrated(name, overrides, quant=False).to(where)  # the same weights
    int_model = calibrated(name, overrides).to(where)
    cfg = int_model.cfg
    images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=where)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=where)

    def evaluation(model):
        model.eval()

        def run():
            with torch.no_grad():
                model(images)
        return run

    def training(model, bf16=False, fused=False):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5,
                                      fused=True if fused else None)

        def run():
            with torch.autocast(where.type, torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    rows = [("FP32 eval", evaluation(float_model)), ("INT eval", evaluation(int_model)),
            ("FP32 train step", training(float_model)), ("QAT train step", training(int_model)),
            ("QAT train step, bf16 + fused AdamW", training(int_model, True, True))]
    out = [dict(what=what, images_per_s=images_per_s(run, batch, where, warmup, steps))
           for what, run in rows]
    fp32_step = out[2]["images_per_s"]
    for row in out[3:]:
        row["step_time_vs_fp32"] = fp32_step / row["images_per_s"]
    return out


def markdown(rows: list[dict], device: str, name: str, batch: int) -> str:
    cells = [[row["what"], f"{row['images_per_s']:.1f}",
              "" if row.get("step_time_vs_fp32") is None
              else f"{row['step_time_vs_fp32']:.2f}x"] for row in rows]
    return (f"`{name}`, batch {batch}, on {device}:\n\n"
            + markdown_table(["what", "images/s", "step time vs FP32 step"], cells,
                             align="lrr"))


def run_step(label: str, argv: list[str], timeout: int) -> dict:
    """Run a command from the checkout's root with its ``src`` importable."""
    start = time.perf_counter()
    print(f"== {label}: {' '.join(argv)}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}
    try:
        code = subprocess.run(argv, cwd=ROOT, timeout=timeout, env=env).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    return dict(step=label, ok=code == 0, returncode=code,
                seconds=round(time.perf_counter() - start, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="deit_small")
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason:
        print(f"gpu-check skipped: {reason}")
        return 0
    device = f"cuda:{torch.cuda.current_device()}"
    name = torch.cuda.get_device_name(device)
    steps = [run_step("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-x",
                                     "-p", "no:cacheprovider", *CUDA_TESTS], 240)]
    with tempfile.TemporaryDirectory() as tmp:
        steps.append(run_step("torchrun training", [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "intvit",
            "train", "--model", "custom", "--input-size", "32", "--patch-size", "8",
            "--embed-dim", "64", "--depth", "2", "--num-heads", "2", "--data", "synthetic",
            "--epochs", "1", "--batch-size", "64", "--lr", "1e-3", "--device", "cuda",
            "--layer-type", "ppoly", "--layernorm", "ivit", "--output-dir", tmp], 180))
    parity = logits_agree(device)
    print(json.dumps(parity, indent=1))
    rows = throughput(args.model, args.batch, device)
    table = markdown(rows, f"{name} ({device})", args.model, args.batch)
    print(table)
    ok = all(s["ok"] for s in steps) and all(p["equal"] for p in parity)
    if args.json:
        write_result(args.json, "gpu-check", dict(device=name, steps=steps, parity=parity,
                                                  throughput=rows, ok=ok))
    print("gpu-check: " + ("all passed" if ok else "FAILED: " + ", ".join(
        [s["step"] for s in steps if not s["ok"]] + [p["model"] + " logits differ"
                                                     for p in parity if not p["equal"]])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
