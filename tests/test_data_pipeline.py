"""timm's data flags: parsed, recorded in checkpoints and reused by evaluation; a folder
of small images gets the small-image pipeline, and says so."""

import numpy as np
from PIL import Image

from conftest import small_model
from intvit.cli import build_parser
from intvit.cli.common import data_config, pipeline_options, recorded_pipeline
from intvit.data import DataConfig, build_loader


def image_folder(root, side, count=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(folder / f"{i}.png")
    return root


def test_folder_of_small_images_is_resized_not_cropped(tmp_path, capsys):
    root = image_folder(tmp_path / "digits", 28)
    loader = build_loader(DataConfig(data=str(root), img_size=32, in_chans=1, batch_size=4),
                          "train")
    text = repr(loader.dataset.transform)
    assert "scale=(1.0, 1.0)" in text and "scale=(0.08" not in text
    assert "resized whole to 32 px" in capsys.readouterr().out
    val = build_loader(DataConfig(data=str(root), img_size=32, in_chans=1), "val")
    assert "Resize(size=32," in repr(val.dataset.transform)  # not 32 / crop_pct
    images, _ = next(iter(val))
    assert images.shape == (8, 1, 32, 32)


def test_folder_of_large_images_gets_imagenet_treatment(tmp_path, capsys):
    root = image_folder(tmp_path / "photos", 96, count=2)
    loader = build_loader(DataConfig(data=str(root), img_size=32, in_chans=1), "train")
    assert "scale=(0.08, 1.0)" in repr(loader.dataset.transform)
    assert "resized whole" not in capsys.readouterr().out


def test_pipeline_flags_are_recorded_and_reused():
    parser = build_parser()
    train = parser.parse_args(["train", "--hflip", "0", "--scale", "0.5", "1", "--aa",
                               "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--crop-pct", "0.9",
                               "--mean", "0.5", "0.5", "0.5", "--interpolation", "bilinear"])
    recorded = pipeline_options(train)
    assert recorded == {"hflip": 0.0, "scale": [0.5, 1.0], "auto_augment": "rand-m9-mstd0.5-inc1",
                        "re_prob": 0.25, "crop_pct": 0.9, "mean": [0.5, 0.5, 0.5],
                        "interpolation": "bilinear"}
    info = {"train": {"data_pipeline": recorded}}
    assert recorded_pipeline(info) == recorded
    model = small_model()
    evaluation = parser.parse_args(["eval", "--checkpoint", "c", "--data", "synthetic"])
    cfg = data_config(evaluation, model, info)
    assert (cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.scale) == (
        0.9, "bilinear", (0.5, 0.5, 0.5), (0.5, 1.0))
    typed = parser.parse_args(["eval", "--checkpoint", "c", "--data", "synthetic",
                               "--crop-pct", "1.0"])
    assert data_config(typed, model, info).crop_pct == 1.0
    assert data_config(typed, model).hflip == DataConfig().hflip


def test_every_eval_engine_reads_the_recorded_pipeline(tmp_path):
    """``eval`` through an engine normalizes the images as the checkpoint's training did,
    like the model path: same loss, not the default mean and std's."""
    import json

    import torch

    from conftest import randomize
    from intvit.cli import main
    from intvit.models import build_quant_model, model_config
    from intvit.models.checkpoint import save_checkpoint
    from intvit.quant import Mode, QuantConfig

    root = image_folder(tmp_path / "digits", 28)
    torch.manual_seed(0)
    model = build_quant_model(model_config("custom", img_size=32, patch_size=8, embed_dim=32,
                                           depth=1, num_heads=2, in_chans=1, num_classes=2),
                              QuantConfig())
    randomize(model)
    model.set_mode(Mode.CALIBRATE)
    with torch.no_grad():
        model(torch.randn(8, 1, 32, 32))
    ck = save_checkpoint(tmp_path / "ck.safetensors", model.eval(),
                         info={"data_pipeline": {"mean": [0.9], "std": [0.1]}})
    losses = {}
    for engine in ("model", "int"):
        out = tmp_path / f"{engine}.json"
        assert main(["eval", "--checkpoint", str(ck), "--engine", engine, "--data", str(root),
                     "--json", str(out)]) == 0
        losses[engine] = json.loads(out.read_text())["loss"]
    out = tmp_path / "default.json"
    assert main(["eval", "--checkpoint", str(ck), "--engine", "int", "--data", str(root),
                 "--mean", "0.5", "--std", "0.5", "--json", str(out)]) == 0
    assert losses["model"] == losses["int"] != json.loads(out.read_text())["loss"]
