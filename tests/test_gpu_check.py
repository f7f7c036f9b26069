"""The device check's CPU-runnable parts: it skips cleanly without CUDA, its parity
and throughput measurements run (here on the CPU, on small models), and its ``--json``
file is a ``gpu-check`` result."""

import importlib.util
from pathlib import Path

import pytest
import torch

from intvit.result_files import read_result

spec = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_skips_cleanly_without_cuda(capsys):
    assert gpu_check.main([]) == 0
    assert "gpu-check skipped: no CUDA GPU" in capsys.readouterr().out


def test_parity_and_throughput_rows_on_the_cpu():
    small = gpu_check.PARITY_MODELS[:2]
    rows = gpu_check.logits_agree("cpu", batch=2, models=small)
    assert [r["model"] for r in rows] == ["small ViT", "small Swin"]
    assert all(r["equal"] and r["differing"] == 0 for r in rows)
    table = gpu_check.throughput("custom", batch=4, device="cpu", warmup=0, steps=1,
                                 overrides=gpu_check.SMALL_VIT)
    assert [r["what"] for r in table][:4] == ["FP32 eval", "INT eval", "FP32 train step",
                                               "QAT train step"]
    assert all(r["images_per_s"] > 0 for r in table)
    assert table[3]["step_time_vs_fp32"] > 0
    text = gpu_check.markdown(table, "cpu", "custom", 4)
    assert "| QAT train step |" in text and "x |" in text


def test_json_is_a_gpu_check_result(tmp_path, monkeypatch):
    """The check's report, with its GPU steps stood in for (no GPU here), reads back as a
    ``gpu-check`` result holding what the steps gave."""
    parity = [dict(model="small ViT", equal=True, differing=0)]
    rows = [dict(what="FP32 eval", images_per_s=10.0)]
    monkeypatch.setattr(gpu_check, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _: "Stand-in GPU")
    monkeypatch.setattr(gpu_check, "run_step", lambda label, argv, timeout: dict(
        step=label, ok=True, returncode=0, seconds=0.0))
    monkeypatch.setattr(gpu_check, "logits_agree", lambda device: parity)
    monkeypatch.setattr(gpu_check, "throughput", lambda name, batch, device: rows)
    path = tmp_path / "gpu-check.json"
    assert gpu_check.main(["--json", str(path)]) == 0
    value = read_result(path, ["gpu-check"])
    assert value["device"] == "Stand-in GPU" and value["ok"] is True
    assert value["parity"] == parity and value["throughput"] == rows
    assert [s["step"] for s in value["steps"]] == ["CUDA tests", "torchrun training"]
