"""--device: one helper resolves it, with errors that say what this machine has; the fast
QAT options train on the CPU too, and the program exported afterwards depends only on
the weights and ranges."""

import pytest
import torch
from conftest import SMALL

from intvit.cli import main
from intvit.device import DeviceError, model_device, resolve_device
from intvit.engine import export_program
from intvit.models.checkpoint import load_checkpoint
from intvit.train.loop import run_training
from intvit.train.options import TrainConfig

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA GPU (run `make gpu-check` on a GPU machine)")


@NO_CUDA
def test_auto_is_the_cpu_without_cuda_and_cuda_is_an_error():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="no usable CUDA GPU.*--device cpu"):
            resolve_device(spec)


def test_bad_device_names():
    with pytest.raises(DeviceError, match="accepted: auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


@CUDA
def test_cuda_indices():
    count = torch.cuda.device_count()
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device(f"cuda:{count - 1}").index == count - 1
    with pytest.raises(DeviceError, match=f"GPU {count} does not exist"):
        resolve_device(f"cuda:{count}")
    with pytest.raises(DeviceError, match="must be a number"):
        resolve_device("cuda:x")


@NO_CUDA
def test_cli_reports_a_missing_gpu(capsys):
    code = main(["calibrate", "--model", "custom", "--input-size", "32", "--patch-size", "8",
                 "--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--data",
                 "synthetic", "--out", "x.safetensors", "--device", "cuda:1"])
    assert code == 2 and "no usable CUDA GPU" in capsys.readouterr().err


def test_fast_qat_options_train_and_export_depends_on_weights_only(tmp_path):
    cfg = TrainConfig(model="custom", data="synthetic",
                      model_overrides={k: v for k, v in SMALL.items() if k != "num_classes"},
                      quant={"gelu": "ppoly", "softmax": "ppoly", "layernorm": "ivit"},
                      epochs=1, lr=2e-3, batch_size=32, calib_batches=2, train_limit=64,
                      val_limit=32, output_dir=str(tmp_path / "run"), progress=False,
                      device="cpu", bf16=True, fused_optimizer=True)
    result = run_training(cfg)
    model, _ = load_checkpoint(result["checkpoint"])
    assert model_device(model).type == "cpu"
    again, _ = load_checkpoint(result["checkpoint"])
    first, second = export_program(model), export_program(again)
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)
