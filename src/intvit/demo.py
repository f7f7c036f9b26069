"""The main job on a built-in default: analyze the approximations, train a small ViT on
Fashion-MNIST in float (cached), quantize it (PTQ), fine-tune it (QAT) and evaluate the
integer model after each step; then export the trained model as an integer program, an
ONNX graph and a C library, check that every engine (the compiled C library included)
gives the model's integer logits on the validation images, and time the engines against
the float baselines. Falls back to the
synthetic set where Fashion-MNIST is not installed (``apt-get install
dataset-fashion-mnist``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data import DataConfig, DataError, build_dataset, build_loader
from .device import resolve_device
from .evaluation import evaluate
from .fileio import write_bytes, write_json, write_text
from .models.checkpoint import read_metadata, save_checkpoint
from .models.factory import ModelSource, make_model
from .quant import QuantConfig, calibrate
from .result_files import tag_result
from .tables import markdown_table
from .train.loop import run_training
from .train.options import TrainConfig

ARCH = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=64, depth=4, num_heads=4)
DATA = dict(train_limit=12000, val_limit=2000, batch_size=128)


def pick_data() -> str:
    try:
        build_dataset(DataConfig(data="fashion-mnist", img_size=28, in_chans=1, download=False),
                      "val")
        return "fashion-mnist"
    except DataError as err:
        print(f"note: {err}\nnote: the demo uses the synthetic data set instead")
        return "synthetic"


def run_demo(out: Path, quant: QuantConfig, device: str = "auto") -> dict[str, Any]:
    data = pick_data()
    where = resolve_device(device)
    fp32_dir = out / "fp32"
    fp32 = TrainConfig(model="custom", data=data, model_overrides=ARCH, quant={"enabled": False},
                       epochs=4, lr=2e-3, warmup_epochs=0.5, output_dir=str(fp32_dir),
                       device=device, **DATA)
    cached = fp32_dir / "last.safetensors"
    info = read_metadata(cached)["info"] if cached.exists() else {}
    if info.get("train") == fp32.as_dict() and info.get("epoch") == fp32.epochs:
        print(f"using the cached float baseline {cached}")
    else:
        print(f"1/4 training the float baseline on {data} ({fp32.epochs} epochs)")
        run_training(fp32)
    data_cfg = DataConfig(data=data, img_size=28, in_chans=1, **DATA)
    val = build_loader(data_cfg, "val")
    fp32_model = make_model(ModelSource(checkpoint=str(cached)), None)[0].to(where)
    results = {"data": data, "fp32": evaluate(fp32_model, val).as_dict()}

    print("2/4 post-training quantization (calibration only)")
    model, _ = make_model(ModelSource(checkpoint=str(cached)), quant)
    model.to(where)
    calibrate(model, build_loader(data_cfg, "train"), 8)
    results["ptq"] = evaluate(model, val).as_dict()
    ptq_path = save_checkpoint(out / "ptq.safetensors", model, {"metrics": results["ptq"]})

    print("3/4 quantization-aware training (1 epoch)")
    qat = TrainConfig(data=data, checkpoint=str(ptq_path), epochs=1, lr=1e-4,
                      output_dir=str(out / "qat"), device=device, **DATA)
    trained = make_model(ModelSource(checkpoint=run_training(qat)["checkpoint"]), None)[0]
    trained.to(where)
    results["qat"] = evaluate(trained, val).as_dict()

    print("4/4 export, engine parity, latency")
    results["engines"] = deploy(trained.cpu(), val, out)  # the engines run on the CPU
    write_json(out / "results.json", tag_result("demo", results))
    return results


def deploy(model, val, out: Path) -> dict[str, Any]:
    """Export ``model``, compare the engines' integer logits with the eval-mode model's
    on the validation images, and time them (batch 1 and 8) against its float twin."""
    from .engine import export_program
    from .engine.bench import markdown, time_engines
    from .engine.c import generate
    from .engine.parity import compare_engines
    from .engine.engines import make_engine
    from .engine.onnx_export import to_onnx
    from .engine.tvm import tvm_available
    from .models.registry import float_twin

    program = export_program(model)
    program.save(out / "model.int.safetensors")
    write_bytes(out / "model.onnx", to_onnx(program).SerializeToString())
    c_library = generate(program).write(out / "c")
    kinds = ["int", "onnx"] + (["tvm"] if tvm_available() else []) + ["c"]
    engines = {"model": lambda x: model.forward_int(x).value}
    engines |= {kind: make_engine(kind, program) for kind in kinds}
    parity = compare_engines(engines, (images for images, _ in val))
    rows = time_engines("demo ViT", float_twin(model), model, program, [1, 8], kinds,
                        n_threads=2, warmup=3, repeats=20, workdir=out / "latency")
    latency = markdown(rows, "Latency of the demo model (2 threads, median of 20 runs):")
    write_text(out / "latency.md", latency + "\n")
    return {"program": str(out / "model.int.safetensors"), "onnx": str(out / "model.onnx"),
            "c": str(c_library),
            "parity": parity, "latency": [vars(r) for r in rows], "latency_table": latency}


def table(results: dict[str, Any]) -> str:
    base = results["fp32"]["top1"]
    rows = [markdown_table(
        ["model", "top-1", "vs FP32", "loss"],
        [[label, f"{r['top1']:.2f}", f"{r['top1'] - base:+.2f}", f"{r['loss']:.4f}"]
         for label, r in (("FP32", results["fp32"]),
                          ("PTQ int8 (integer model)", results["ptq"]),
                          ("QAT int8 (integer model)", results["qat"]))])]
    if "engines" in results:
        for name, c in results["engines"]["parity"].items():
            rows.append(f"\nengine {name} vs the eval-mode model: {c['differing_logits']} of "
                        f"{c['logits']} integer logits differ ({c['images']} images)")
        rows.append("\n" + results["engines"]["latency_table"])
    return "\n".join(rows)
