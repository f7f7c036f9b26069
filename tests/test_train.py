"""Calibrate, train, evaluate, save, load, resume: the flows users run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL

from intvit.cli import main
from intvit.engine.engines import fastest_engine
from intvit.fileio import read_run_manifest
from intvit.models.checkpoint import load_checkpoint
from intvit.train.loop import run_training
from intvit.train.options import TrainConfig, TrainingStopped

ARCH = ["--model", "custom", "--input-size", "32", "--patch-size", "8", "--embed-dim", "32",
        "--depth", "2", "--num-heads", "2"]


def config(tmp_path, **overrides):
    base = dict(model="custom", data="synthetic",
                model_overrides={k: v for k, v in SMALL.items() if k != "num_classes"},
                quant={"gelu": "ppoly", "softmax": "ppoly", "layernorm": "ivit"},
                epochs=2, lr=2e-3, batch_size=32, calib_batches=4, train_limit=192,
                val_limit=64, output_dir=str(tmp_path / "run"), progress=False)
    return TrainConfig(**{**base, **overrides})


def weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_qat_lowers_the_loss_and_eval_reproduces_after_reload(tmp_path):
    result = run_training(config(tmp_path))
    first, last = result["history"][0], result["history"][-1]
    assert last["train_loss"] < first["train_loss"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", result["checkpoint"], "--data", "synthetic",
                 "--val-limit", "64", "--batch-size", "32", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"kind", "top1", "top3", "top5", "loss", "images_per_s", "engine"}
    assert metrics["kind"] == "evaluation"
    assert metrics["engine"] == fastest_engine()  # --engine auto on a CPU: the same integers
    assert metrics["top1"] == last["val_top1"] and metrics["loss"] == last["val_loss"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
def test_qat_on_real_fashion_mnist_lowers_the_loss(tmp_path):
    arch = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    result = run_training(config(tmp_path, data="fashion-mnist", model_overrides=arch,
                                 train_limit=1024, val_limit=256, epochs=2))
    first, last = result["history"]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_top1"] > 20.0  # ten classes: twice chance after 64 steps from scratch
    model, _ = load_checkpoint(result["checkpoint"])
    assert model.cfg.in_chans == 1


def test_resume_after_a_kill_loses_nothing(tmp_path, monkeypatch):
    """A run killed mid-epoch and resumed ends with the same weights, bit for bit, as
    the run that was never interrupted."""
    whole = run_training(config(tmp_path / "whole", save_every=2))
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # epoch 2 (6 steps per epoch), after the save at its step 2
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    killed = config(tmp_path / "killed", save_every=2)
    with pytest.raises(KeyboardInterrupt):
        run_training(killed)
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    resumed = run_training(config(tmp_path / "killed", save_every=2,
                                  resume=str(tmp_path / "killed" / "run")))
    a, b = weights(whole["checkpoint"]), weights(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, epochs=2)
    calls = {"n": 0}
    real = torch.nn.Module.__call__

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if type(self).__name__ == "LabelSmoothingCrossEntropy":
            calls["n"] += 1
            if calls["n"] > 8:
                return out * float("nan")
        return out

    monkeypatch.setattr(torch.nn.Module, "__call__", poisoned)
    with pytest.raises(TrainingStopped, match="last good checkpoint"):
        run_training(cfg)
    monkeypatch.setattr(torch.nn.Module, "__call__", real)
    model, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["info"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values()
               if v.dtype.is_floating_point and v.numel() and not torch.isinf(v).any())


def test_calibrate_command_writes_a_checkpoint_that_evaluates_the_same(tmp_path):
    ck, js = tmp_path / "ptq.safetensors", tmp_path / "ptq.json"
    assert main(["calibrate", *ARCH, "--data", "synthetic", "--batches", "2", "--batch-size",
                 "16", "--val-limit", "32", "--layer_type", "ppoly", "--layernorm", "ibert",
                 "--out", str(ck),
                 "--json", str(js)]) == 0
    before = json.loads(js.read_text())
    assert main(["eval", "--checkpoint", str(ck), "--data", "synthetic", "--batch-size", "16",
                 "--val-limit", "32", "--json", str(js)]) == 0
    after = json.loads(js.read_text())
    assert before["top1"] == after["top1"] and before["loss"] == after["loss"]
    model, _ = load_checkpoint(ck)
    assert (model.qcfg.gelu, model.qcfg.softmax, model.qcfg.layernorm) == ("ppoly", "ppoly",
                                                                              "ibert")


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--checkpoint", "missing.safetensors", "--data", "synthetic"], "no checkpoint"),
    (["eval", "--checkpoint", "{corrupt}", "--data", "synthetic"], "truncated or corrupted"),
    (["calibrate", *ARCH, "--data", "/no/such/folder", "--out", "x.safetensors"], "/no/such/folder"),
    (["calibrate", *ARCH, "--data", "{empty}", "--out", "x.safetensors"], "train"),
    (["calibrate", *ARCH, "--gelu", "shiftgelu", "--out", "x.safetensors"], "unknown gelu"),
    (["calibrate", *ARCH, "--bitwidth", "8,8,40", "--out", "x.safetensors"], "1 or 8 values"),
    (["calibrate", *ARCH, "--bitwidth", "40", "--out", "x.safetensors"], "[2, 16]"),
    (["train", *ARCH, "--epochs", "0"], "epochs"),
])
def test_bad_input_is_a_clear_message_and_nonzero_exit(argv, needle, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{corrupt}", str(corrupt)).replace("{empty}", str(tmp_path / "empty"))
            for a in argv]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from intvit.models import build_quant_model, model_config
    from intvit.models.checkpoint import CheckpointError, save_checkpoint
    from intvit.models.factory import ModelSource, make_model
    from intvit.quant import QuantConfig

    path = save_checkpoint(tmp_path / "a.safetensors",
                           build_quant_model(model_config("custom", **SMALL), QuantConfig()))
    with pytest.raises(CheckpointError, match="depth is 2, not 3"):
        load_checkpoint(path, expect={"depth": 3})
    with pytest.raises(CheckpointError, match="embed_dim is 32, not 192"):
        make_model(ModelSource("deit_tiny", checkpoint=str(path)), None)
    model, _ = make_model(ModelSource("custom", str(path), overrides={"depth": 2}), None)
    assert model.cfg.depth == 2
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(truncated)


def test_mixup_cutmix_and_gradient_accumulation(tmp_path):
    """The DeiT recipe's soft targets and accumulation: one update per two batches."""
    result = run_training(config(tmp_path, epochs=1, mixup=0.8, cutmix=1.0, accum_steps=2,
                                 warmup_epochs=0.5))
    _, meta = load_checkpoint(result["checkpoint"])
    assert meta["info"]["update"] == 3  # 6 batches of 32 out of 192 images
    assert result["history"][0]["train_loss"] > 0


def test_resume_from_the_command_line_keeps_the_run_configuration(tmp_path):
    """`train --resume RUN --epochs 2` continues the saved run (its learning rate, data
    and limits), not the command line's defaults, and extends it to two epochs."""
    out = tmp_path / "run"
    common = [*ARCH, "--data", "synthetic", "--train-limit", "64", "--val-limit", "32",
              "--batch-size", "32", "--gelu", "ppoly", "--softmax", "ppoly"]
    assert main(["train", *common, "--epochs", "1", "--lr", "0.002",
                 "--output-dir", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    manifest = read_run_manifest(out)
    assert manifest["command"] == f"intvit train --resume {out} --epochs 2"
    assert manifest["inputs"]["resume"] == str(out)
    _, meta = load_checkpoint(out / "last.safetensors")
    saved = meta["info"]["train"]
    assert meta["info"]["epoch"] == 2
    assert (saved["lr"], saved["train_limit"], saved["epochs"]) == (0.002, 64, 2)


def test_resume_of_a_foreign_checkpoint_says_what_to_do(tmp_path, capsys):
    from intvit.models import build_quant_model, model_config
    from intvit.models.checkpoint import save_checkpoint
    from intvit.quant import QuantConfig

    path = save_checkpoint(tmp_path / "c.safetensors",
                           build_quant_model(model_config("custom", **SMALL), QuantConfig()))
    assert main(["train", "--resume", str(path)]) == 2
    assert "--checkpoint instead" in capsys.readouterr().err


def test_io_stats_then_analysis_on_the_recorded_inputs(tmp_path):
    ck, stats, report = tmp_path / "m.safetensors", tmp_path / "io.csv", tmp_path / "a.json"
    assert main(["calibrate", *ARCH, "--data", "synthetic", "--batches", "2", "--batch-size",
                 "16", "--val-limit", "16", "--gelu", "ppoly", "--softmax", "ppoly",
                 "--out", str(ck)]) == 0
    assert main(["eval", "--checkpoint", str(ck), "--data", "synthetic", "--val-limit", "16",
                 "--io-stats", str(stats)]) == 0
    header = stats.read_text().splitlines()[0].split(",")
    assert header[:3] == ["layer", "type", "op"]
    assert main(["analyze", "--from-stats", str(stats), "--op", "gelu", "--json",
                 str(report)]) == 0
    layers = json.loads(report.read_text())["layers"]
    assert layers and all(entry["op"] == "gelu" for entry in layers)
