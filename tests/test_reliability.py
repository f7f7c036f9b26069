"""Issue 11: every bad input is a clear error before work starts, every write is atomic.

Each test here failed on the main branch before the fix it names; docs/reliability.md
lists them, what each input gets, and the test that proves it."""

import datetime
import json
import os
import socket
import stat
import sys

import numpy as np
import pytest
import torch

from intvit import fileio, progress
from intvit.cli import main
from intvit.data import DataConfig, DataError, build_dataset
from intvit.engine.program import IntProgram, ProgramError

ARCH = ["--model", "custom", "--input-size", "32", "--patch-size", "8", "--embed-dim", "32",
        "--depth", "2", "--num-heads", "2"]
BARE = ["train", *ARCH, "--data", "synthetic", "--epochs", "1", "--train-limit", "32",
        "--val-limit", "8", "--batch-size", "16", "--calib-batches", "1", "--no-progress"]
TRAIN = [*BARE, "--layer-type", "ppoly", "--layernorm", "ibert"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A calibrated checkpoint and its integer program (both tiny)."""
    root = tmp_path_factory.mktemp("rel")
    ck, program = root / "ptq.safetensors", root / "ptq.int.safetensors"
    assert main(["calibrate", *ARCH, "--data", "synthetic", "--batches", "1", "--batch-size",
                 "16", "--val-limit", "8", "--layer-type", "ppoly", "--layernorm", "ibert",
                 "--out", str(ck),
                 "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(ck), "--out", str(program)]) == 0
    return {"ck": ck, "program": program, "root": root}


def refused(argv, needle, capsys):
    """``intvit argv`` is refused (exit 2, by argparse or by intvit) with ``needle`` in
    the message."""
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    assert code == 2
    captured = capsys.readouterr()
    assert needle in captured.err, captured.err
    return captured.out + captured.err


# ------------------------------------------------------------------ nothing lost

def test_export_onto_its_own_checkpoint_is_refused(files, capsys):
    before = files["ck"].read_bytes()
    refused(["export", "--checkpoint", str(files["ck"]), "--out", str(files["ck"])],
            "would destroy", capsys)
    assert files["ck"].read_bytes() == before


def test_a_failed_onnx_export_keeps_the_good_file(files, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the good model")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", full_disk)
    with pytest.raises(OSError):
        main(["export", "--checkpoint", str(files["ck"]), "--out", str(out)])
    assert out.read_bytes() == b"the good model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left


def test_golden_vectors_are_written_whole_or_not_at_all(files, tmp_path, monkeypatch):
    out = tmp_path / "golden"
    assert main(["export", "--checkpoint", str(files["ck"]), "--format", "golden",
                 "--images", "1", "--out", str(out)]) == 0
    manifest = (out / "manifest.json").read_text()

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("intvit.engine.golden.save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        main(["export", "--checkpoint", str(files["ck"]), "--format", "golden", "--out",
              str(out)])
    assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden"]


@pytest.mark.parametrize("fmt", ["golden", "c"])
def test_a_folder_export_never_replaces_a_folder_of_other_files(fmt, files, tmp_path, capsys):
    """Folder outputs replace a folder whole; one holding the user's files is refused
    before any work, and its files stay; an export over its own earlier export works."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    refused(["export", "--checkpoint", str(files["ck"]), "--format", fmt, "--out", str(out)],
            "folder of other files", capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    again = tmp_path / "export"
    for _ in range(2):
        assert main(["export", "--checkpoint", str(files["ck"]), "--format", fmt,
                     "--images", "1", "--out", str(again)]) == 0
    assert (again / fileio.FOLDER_MARK).exists()


def test_resume_needs_the_training_state_in_the_checkpoint(files, tmp_path, capsys):
    refused(["train", "--resume", str(files["ck"])], "not written by `intvit train`", capsys)
    from intvit.models.checkpoint import CheckpointError, load_train_state
    with pytest.raises(CheckpointError, match="holds no training state"):
        load_train_state(files["ck"])


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with fileio.DirLock(out, "intvit test"):
        err = refused([*TRAIN, "--output-dir", str(out)], "in use by a running intvit",
                      capsys)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in err
        assert ": intvit test)" in err
        assert f"delete {out / fileio.LOCK_FILE} and run again" in " ".join(err.split())
    assert not (out / "last.safetensors").exists()


def test_the_lock_names_its_holder_without_the_arguments(tmp_path, monkeypatch):
    """The lock file holds pid, host, start time and command name: not argv, which may
    hold paths or keys and need not be UTF-8 (a surrogate-escaped byte broke the write)."""
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["intvit", "train", "--data", "/home/me/secret\udcff"])
    with fileio.DirLock(out, "intvit training"):
        text = (out / fileio.LOCK_FILE).read_text(encoding="utf-8")
    head, command = text.rstrip("\n").split(": ")
    assert command == "intvit training"
    started = head.split(", started ")[1]
    assert datetime.datetime.fromisoformat(started).tzinfo is not None
    assert head.startswith(f"pid {os.getpid()} on {socket.gethostname()}, started ")
    assert "secret" not in text
    assert (out / fileio.LOCK_FILE).read_text() == ""


def test_a_lock_file_that_is_not_utf8_is_still_read(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / fileio.LOCK_FILE).write_bytes(b"pid 999999 on \xff\xfe: intvit training\n")
    notes = []
    with fileio.DirLock(out, "intvit training", notes.append):
        pass
    assert "took over" in notes[0] and "pid 999999" in notes[0]


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / fileio.LOCK_FILE).write_text("pid 999999 on elsewhere: intvit train\n")
    notes = []
    with fileio.DirLock(out, "intvit training", notes.append):
        pass
    assert "took over" in notes[0] and "pid 999999" in notes[0]


def _rewrite(path, graph_edit=None, sha=None):
    from safetensors.torch import safe_open, save_file
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    graph = json.loads(meta["graph"])
    graph_edit(graph)
    meta["graph"] = json.dumps(graph)
    save_file(tensors, str(path), metadata=meta)


def test_the_program_checksum_covers_the_graph(files, tmp_path):
    path = tmp_path / "edited.safetensors"
    path.write_bytes(files["program"].read_bytes())

    def widen_a_clamp(graph):
        node = next(n for n in graph["nodes"] if n["op"] == "requantize")
        node["attrs"]["hi"] += 1

    _rewrite(path, widen_a_clamp)
    with pytest.raises(ProgramError, match="edited"):
        IntProgram.load(path)


@pytest.mark.parametrize("edit,needle", [
    (lambda n: n["attrs"].update(lo="zero"), "must be an integer"),
    (lambda n: n["attrs"].update(hi=-1000), "lo = "),
    (lambda n: n["attrs"].pop("e", None) or n["params"].pop("e"), "missing attribute"),
    (lambda n: n["attrs"].update(wobble=1), "unknown attribute"),
])
def test_malformed_attributes_are_a_program_error(files, edit, needle):
    program = IntProgram.load(files["program"])
    node = next(n for n in program.nodes if n.op == "requantize")
    raw = {"attrs": node.attrs, "params": node.params}
    edit(raw)
    with pytest.raises(ProgramError, match=needle):
        program.check()


def _png(path, array, mode=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _folder(root, image, name="0.png"):
    for split in ("train", "val"):
        for c in ("a", "b"):
            _png(root / split / c / name, image)
    return root


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257)  # 0..65535
    root = _folder(tmp_path / "d", ramp)
    ds, _ = build_dataset(DataConfig(str(root), img_size=16, in_chans=1,
                                     mean=(0.0,), std=(1.0,), resize_only=True), "val")
    image = ds[0][0][0]
    expected = torch.arange(256, dtype=torch.float32).reshape(16, 16) / 255
    assert torch.allclose(image, expected, atol=1 / 255 + 1e-6)
    assert (image >= 1.0).float().mean() < 0.01  # main: 99.8% white


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I"])
def test_images_of_any_pil_mode_are_converted(tmp_path, mode):
    from PIL import Image
    from intvit.data.sources import read_image
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I") else "x.png")
    Image.new("RGB", (8, 8), (200, 100, 50)).convert(mode).save(path)
    image = read_image(str(path), "RGB")
    assert image.mode == "RGB" and image.size == (8, 8)


def test_float_images_are_refused_with_a_message(tmp_path):
    from intvit.data.sources import read_image
    path = tmp_path / "x.tif"
    _png(path, np.full((4, 4), 0.5, dtype=np.float32), "F")
    with pytest.raises(DataError, match="floating-point"):
        read_image(str(path))


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage"])
def test_unreadable_images_are_named_or_skipped(tmp_path, content, capsys):
    root = _folder(tmp_path / "d", np.zeros((8, 8, 3), np.uint8))
    bad = root / "val" / "a" / "1.png"
    bad.write_bytes(content)
    ds, _ = build_dataset(DataConfig(str(root), img_size=8), "val")
    with pytest.raises(DataError, match="--skip-bad-images") as err:
        [ds[i] for i in range(len(ds))]
    assert str(bad) in str(err.value)
    ds, _ = build_dataset(DataConfig(str(root), img_size=8, skip_bad_images=True), "val")
    assert len(ds) == 2 and "skipped 1 unreadable" in capsys.readouterr().out


# ------------------------------------------------------------------ outputs checked first

@pytest.mark.parametrize("argv,needle", [
    (["eval", "--checkpoint", "{ck}", "--data", "synthetic", "--json", "{dir}"], "is a folder"),
    (["eval", "--checkpoint", "{ck}", "--data", "synthetic", "--io-stats", "{dir}"],
     "is a folder"),
    (["eval", "--checkpoint", "{ck}", "--data", "synthetic", "--json", "{file}/x.json"],
     "is a file"),
    (["export", "--checkpoint", "{ck}", "--out", "{dir}"], "is a folder"),
    (["export", "--checkpoint", "{ck}", "--format", "golden", "--out", "{file}"], "is a file"),
    (["calibrate", *ARCH, "--out", "{dir}"], "is a folder"),
    ([*TRAIN, "--output-dir", "{file}"], "is a file"),
    (["analyze", "--op", "gelu", "--out", "{file}"], "is a file"),
])
def test_outputs_of_the_wrong_kind_are_refused_before_work(files, tmp_path, argv, needle,
                                                          capsys):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{ck}", str(files["ck"])).replace("{dir}", str(tmp_path / "dir"))
            .replace("{file}", str(tmp_path / "file")) for a in argv]
    refused(argv, needle, capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(files, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    refused(["export", "--checkpoint", str(files["ck"]), "--out", str(ro / "p.safetensors")],
            "cannot write", capsys)


# ------------------------------------------------------------------ bad values

@pytest.mark.parametrize("argv,needle", [
    (["analyze", "--op", "softmax", "--length", "0"], ">= 1"),
    (["analyze", "--op", "softmax", "--rows", "0"], ">= 1"),
    (["analyze", "--op", "layernorm", "--dim", "0"], ">= 1"),
    (["analyze", "--op", "gelu", "--scale", "inf"], "finite"),
    ([*TRAIN, "--smoothing", "2"], "smoothing must lie in [0, 1)"),
    ([*TRAIN, "--lr", "inf"], "lr must be a finite"),
    ([*TRAIN, "--clip-grad", "nan"], "clip_grad must be a finite"),
    ([*TRAIN, "--weight-decay", "nan"], "weight_decay must be a finite"),
    ([*TRAIN, "--save-every", "-1"], "save_every"),
    ([*TRAIN, "--save-every", "3", "--accum-steps", "2"], "multiple of accum_steps"),
    ([*TRAIN, "--mixup", "-1"], "mixup must be >= 0"),
    ([*TRAIN, "--warmup-epochs", "-5"], "warmup_epochs"),
    ([*TRAIN, "--max-steps-per-epoch", "0"], ">= 1"),
    ([*TRAIN, "--depth", "0"], ">= 1"),
    ([*TRAIN, "--weight-bits", "0"], "[2, 16]"),
    ([*BARE, "--layer-type", "ppoly"], "add --layernorm with one of float, ivit, ibert"),
    (["calibrate", *ARCH, "--nb-classes", "5", "--out", "{tmp}/x.safetensors"],
     "has 10, whose labels"),
    (["calibrate", *ARCH, "--batches", "0", "--out", "{tmp}/x.safetensors"], ">= 1"),
    ([*TRAIN, "--calib-batches", "0"], "calibration needs at least one batch"),
    (["export", "--checkpoint", "{ck}", "--format", "golden", "--images", "-2", "--out",
      "{tmp}/g"], ">= 1"),
    (["export", "--checkpoint", "{ck}", "--format", "int", "--out", "{tmp}/m.onnx"],
     "name it m.safetensors"),
    (["export", "--checkpoint", "{ck}", "--format", "onnx", "--out", "{tmp}/m.safetensors"],
     "name it m.onnx"),
    (["verify", "--checkpoint", "{ck}", "--engines", "int,int"], "more than once"),
    (["verify", "--checkpoint", "{ck}", "--engines", "foo"], "engines: model, int"),
    (["verify", "--checkpoint", "{ck}", "--engines", "int"], "at least two"),
    (["eval", "--program", "{tmp}/m.onnx", "--engine", "int", "--data", "synthetic"],
     "It is an ONNX file"),
    (["inspect", "{tmp}/bad.onnx"], "not a readable ONNX model"),
])
def test_bad_values_are_refused_before_work(files, tmp_path, argv, needle, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    if "m.onnx" in " ".join(argv) and argv[0] == "eval":
        assert main(["export", "--checkpoint", str(files["ck"]), "--out",
                     str(tmp_path / "m.onnx")]) == 0
    argv = [a.replace("{ck}", str(files["ck"])).replace("{tmp}", str(tmp_path))
            for a in argv]
    if argv[0] == "train":
        argv += ["--output-dir", str(tmp_path / "run")]
    refused(argv, needle, capsys)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "g").exists()
    assert not (tmp_path / "m.safetensors").exists()


def test_a_diverging_run_stops_with_the_documented_message(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--lr", "1e6", "--output-dir", str(out)]) == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and "try a lower --lr" in err


# ------------------------------------------------------------------ messages

def test_resume_notes_name_real_flags_and_a_finished_run_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--output-dir", str(out)]) == 0
    capsys.readouterr()
    err = refused(["train", "--resume", str(out), "--input-size", "64", "--model", "deit_tiny",
                   "--epochs", "1"], "has finished 1 epochs", capsys)
    assert "--epochs N with N > 1" in err
    assert "--input-size" in err and "--model" in err and "--img-size" not in err


def test_inspect_names_the_model(files, capsys):
    assert main(["inspect", str(files["program"])]) == 0
    out = capsys.readouterr().out
    assert "model: ?" not in out and "model: vit dim 32 depth 2" in out


# ------------------------------------------------------------------ found by reading

def test_an_accumulation_tail_is_applied_within_its_epoch(tmp_path, monkeypatch):
    from intvit.models.checkpoint import load_train_state
    from intvit.train.loop import run_training
    from test_train import config

    steps = []
    real = torch.optim.AdamW.step

    def counting(self, *a, **k):
        steps.append(sum(p.grad is not None for g in self.param_groups for p in g["params"]))
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    cfg = config(tmp_path, epochs=2, train_limit=48, batch_size=16, val_limit=8,
                 calib_batches=1, accum_steps=2)  # 3 steps an epoch: updates after 2 and 3
    run_training(cfg)
    assert len(steps) == 4
    state = load_train_state(tmp_path / "run" / "last.safetensors")
    assert state["update"] == 4


def test_the_requantization_ratio_is_divided_in_double():
    from intvit.arith import dyadic
    from intvit.quant.modules import QuantAct

    act = QuantAct(8)
    act.scale = lambda: torch.tensor(3.0, dtype=torch.float32)
    s_in = torch.tensor(0.1, dtype=torch.float32)
    exact = dyadic(s_in.double() / torch.tensor(3.0, dtype=torch.float64))
    got = act.multiplier(s_in)
    assert torch.equal(got[0], exact[0]) and torch.equal(got[1], exact[1])
    assert not torch.equal(dyadic((s_in / 3.0).double())[0], exact[0])


def test_the_onnx_floor_shift_takes_per_channel_shifts_with_zeros():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from intvit.engine.onnx_export import GraphWriter

    w = GraphWriter(None)
    w.types["x"] = TensorProto.INT64
    shift = torch.tensor([0, 3, 1, 62])
    out = w.floor_shift("x", shift)
    graph = helper.make_graph(
        w.nodes, "shift", [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 4])],
        [helper.make_tensor_value_info(out, TensorProto.INT64, [None, 4])],
        list(w.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = torch.tensor([[-7, -7, -7, -(1 << 61)], [9, 9, 9, (1 << 61) + 5]])
    got = session.run(None, {"x": x.numpy()})[0]
    assert np.array_equal(got, torch.div(x, 1 << shift, rounding_mode="floor").numpy())


# ------------------------------------------------------------------ files

def test_files_get_the_umask_mode_and_stale_temporaries_go(tmp_path):
    stale = tmp_path / ".x.json.999999.abc.tmp"
    stale.write_text("half")
    mine = tmp_path / f".y.json.{os.getpid()}.abc.tmp"
    mine.write_text("in progress")
    old = os.umask(0o027)
    try:
        path = fileio.write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not stale.exists() and mine.exists()


def test_checkpoints_are_not_private_by_default(files):
    assert stat.S_IMODE(files["ck"].stat().st_mode) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_progress_in_a_log_is_plain_lines_and_no_progress_silences_it(monkeypatch):
    import io

    log = io.StringIO()
    for _ in progress.tqdm(range(3), file=log, mininterval=0):
        pass
    assert "\r" not in log.getvalue() and log.getvalue().count("\n") >= 2
    monkeypatch.setattr(progress, "_enabled", False)
    quiet = io.StringIO()
    for _ in progress.tqdm(range(3), file=quiet, mininterval=0):
        pass
    assert quiet.getvalue() == ""
