"""Accuracy of integer-only 8-bit models on real data (Fashion-MNIST).

Trains a small DeiT-style ViT in float (cached), then for each family of non-linear
approximations (``float`` non-linears as the reference, ``ivit``, ``ibert``, ``ppoly``)
and for the best mixed combination found by ``intvit search`` (on the first
``search_limit`` validation images): PTQ (calibration only)
and QAT (a short fine-tuning from the PTQ model), each evaluated as the integer model
(``eval()``: integer tensors and integer kernels only). Prints and writes a table of
FP32, PTQ and QAT top-1 and their differences to FP32, with the commands, seeds and
times; ``--update-readme`` puts the table into the README between its markers.

    python benchmarks/accuracy.py                 # about 40 minutes on 2 cores
    python benchmarks/accuracy.py --quick         # a few minutes, small subsets
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    import intvit  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from intvit.analysis.search import search
from intvit.data import DataConfig, build_loader
from intvit.evaluation import evaluate
from intvit.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from intvit.models.factory import requantized
from intvit.quant import QuantConfig, calibrate
from intvit.result_files import write_result
from intvit.tables import markdown_table, replace_between
from intvit.train.loop import run_training
from intvit.train.options import TrainConfig

ARCH = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=96, depth=6, num_heads=3)
MODES = {
    "full": dict(fp32_epochs=30, qat_epochs=1, train_limit=None, val_limit=None,
                 search_limit=2000, calib_batches=16),
    "quick": dict(fp32_epochs=3, qat_epochs=1, train_limit=6000, val_limit=1000,
                  search_limit=1000, calib_batches=4),
}
FAMILIES = {
    "float": ("float", "float", "float"),
    "ivit": ("ivit", "ivit", "ivit"),
    "ibert": ("ibert", "ibert", "ibert"),
    "ppoly": ("ppoly", "ppoly", "ivit"),  # no ppoly LayerNorm: I-LayerNorm
}
README_START, README_END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"


def qcfg(names: tuple[str, str, str]) -> QuantConfig:
    return QuantConfig(gelu=names[0], softmax=names[1], layernorm=names[2])


def finished(checkpoint: Path, cfg: TrainConfig) -> bool:
    """A cached run of exactly this configuration that reached its last epoch."""
    if not checkpoint.exists():
        return False
    info = read_metadata(checkpoint)["info"]
    return info.get("train") == cfg.as_dict() and info.get("epoch") == cfg.epochs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subsets, minutes")
    parser.add_argument("--out", default=None, help="run folder (default runs/accuracy[-quick])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--update-readme", action="store_true",
                        help="replace the table between the README's accuracy markers")
    args = parser.parse_args()
    torch.set_num_threads(2)
    mode = "quick" if args.quick else "full"
    plan = MODES[mode]
    out = Path(args.out or f"runs/accuracy{'-quick' if args.quick else ''}")
    command = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    started = time.perf_counter()
    data = DataConfig(data="fashion-mnist", img_size=28, in_chans=1, batch_size=args.batch_size,
                      seed=args.seed, train_limit=plan["train_limit"],
                      val_limit=plan["val_limit"])
    val = build_loader(data, "val")

    timings: dict[str, float] = {}
    fp32 = TrainConfig(model="custom", data="fashion-mnist", model_overrides=ARCH,
                       quant={"enabled": False}, epochs=plan["fp32_epochs"], lr=2e-3,
                       warmup_epochs=min(2, plan["fp32_epochs"] / 3), batch_size=args.batch_size,
                       seed=args.seed, train_limit=plan["train_limit"],
                       val_limit=plan["val_limit"], output_dir=str(out / "fp32"))
    cached = out / "fp32" / "last.safetensors"
    t0 = time.perf_counter()
    if not finished(cached, fp32):
        print(f"training the float baseline ({fp32.epochs} epochs)")
        run_training(fp32)
    timings["fp32_train_s"] = time.perf_counter() - t0
    float_model, _ = load_checkpoint(cached)
    results: dict[str, Any] = {"fp32": evaluate(float_model, val).as_dict()}

    t0 = time.perf_counter()
    calibrated = requantized(float_model, qcfg(FAMILIES["ivit"]))
    calibrate(calibrated, build_loader(data, "train"), plan["calib_batches"])
    timings["calibrate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    search_val = build_loader(replace(data, val_limit=plan["search_limit"]), "val")
    found = search(calibrated, search_val, gelus=["ivit", "ivit_n_20", "ibert", "ppoly"],
                   softmaxes=["ivit", "ibert", "ppoly"], layernorms=["ivit", "ibert"])
    found.write(out / "search")
    best = found.best.candidate
    combos = {**FAMILIES, "best mixed": (best.gelu, best.softmax, best.layernorm)}
    timings["search_s"] = time.perf_counter() - t0

    rows = []
    for label, names in combos.items():
        model = requantized(calibrated, qcfg(names), keep_ranges=True)
        t0 = time.perf_counter()
        ptq = evaluate(model, val)
        ptq_path = save_checkpoint(out / f"ptq_{label.replace(' ', '_')}.safetensors", model,
                                   {"metrics": ptq.as_dict()})
        qat_cfg = TrainConfig(data="fashion-mnist", checkpoint=str(ptq_path),
                              epochs=plan["qat_epochs"], lr=1e-4, batch_size=args.batch_size,
                              seed=args.seed, train_limit=plan["train_limit"],
                              val_limit=plan["val_limit"],
                              output_dir=str(out / f"qat_{label.replace(' ', '_')}"))
        qat_model, _ = load_checkpoint(run_training(qat_cfg)["checkpoint"])
        qat = evaluate(qat_model, val)
        rows.append({"label": label, "gelu": names[0], "softmax": names[1],
                     "layernorm": names[2], "ptq": ptq.as_dict(), "qat": qat.as_dict(),
                     "seconds": time.perf_counter() - t0})
    results.update(rows=rows, mode=mode, seed=args.seed, command=command, arch=ARCH,
                   plan=plan, timings=timings, total_s=time.perf_counter() - started,
                   search=found.as_dict())
    table = markdown(results)
    print(table)
    (out / "accuracy.md").write_text(table + "\n")
    write_result(out / "accuracy.json", "accuracy-benchmark", results)
    if args.json:
        write_result(args.json, "accuracy-benchmark", results)
    if args.update_readme:
        replace_between(Path(__file__).resolve().parents[1] / "README.md", README_START,
                        README_END, table)
    return 0


def markdown(results: dict[str, Any]) -> str:
    base = results["fp32"]["top1"]
    lines = [f"Fashion-MNIST, {results['mode']} mode (`{results['command'].strip()}`), seed "
             f"{results['seed']}, ViT {results['arch']['embed_dim']}-dim x "
             f"{results['arch']['depth']} blocks, 8-bit everywhere; integer models evaluated "
             f"in `eval()` (integer kernels only); {results['total_s'] / 60:.1f} min on 2 cores.",
             ""]
    rows = [["FP32", "float", "float", "float", f"{base:.2f}", "", "", ""]]
    for row in results["rows"]:
        ptq, qat = row["ptq"]["top1"], row["qat"]["top1"]
        rows.append([row["label"], row["gelu"], row["softmax"], row["layernorm"],
                     f"{ptq:.2f}", f"{ptq - base:+.2f}", f"{qat:.2f}", f"{qat - base:+.2f}"])
    lines.append(markdown_table(["model", "GELU", "Softmax", "LayerNorm", "PTQ top-1",
                                 "PTQ - FP32", "QAT top-1", "QAT - FP32"], rows,
                                align="llllrrrr"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
