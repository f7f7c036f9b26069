"""A training run killed at every write of its saves (inside a write, after it and before
the rename, after the rename) resumes to exactly the uninterrupted run's weights, best
checkpoint and history, or is refused with a message saying what to do; a real SIGKILL
in the middle of a write leaves nothing half-written and no lock that blocks the resume.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intvit.models import checkpoint as ck
from intvit.models.checkpoint import CheckpointError, load_checkpoint
from intvit.train.loop import run_training
from test_train import config

PHASES = ("inside", "before-rename", "after-rename")
TINY = dict(epochs=2, train_limit=16, batch_size=8, val_limit=4, calib_batches=1,
            save_every=1)  # 2 steps an epoch: 4 checkpoint writes an epoch


class Killed(BaseException):
    """The process dies here (not an Exception: nothing may catch it)."""


def killing(real, target: int, phase: str):
    calls = {"n": 0}

    def atomic_write(path, write):
        n = calls["n"]
        calls["n"] += 1
        if n != target:
            return real(path, write)
        if phase == "after-rename":
            real(path, write)
            raise Killed
        def dying(tmp):
            write(tmp)
            if phase == "inside":
                with open(tmp, "r+b") as f:
                    f.truncate(os.path.getsize(tmp) // 2)
            raise Killed
        return real(path, dying)
    return atomic_write, calls


def outcome(run: Path):
    """Everything a finished run leaves: last and best weights, and the history."""
    last, meta = load_checkpoint(run / "last.safetensors")
    best, _ = load_checkpoint(run / "best.safetensors")
    history = [{k: v for k, v in h.items() if k != "val_images_per_s"}
               for h in ck.load_train_state(run / "last.safetensors")["history"]]
    return last.state_dict(), best.state_dict(), history


def same(a, b) -> None:
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key
    assert a[2] == b[2]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run's outcome, and how many checkpoint writes it makes."""
    root = tmp_path_factory.mktemp("whole")
    counter, calls = killing(ck.atomic_write, -1, "")
    ck.atomic_write, real = counter, ck.atomic_write
    try:
        run_training(config(root, **TINY))
    finally:
        ck.atomic_write = real
    return outcome(root / "run"), calls["n"]


def test_every_kill_point_resumes_exactly_or_is_refused(whole, tmp_path, monkeypatch):
    whole, writes = whole
    assert writes >= 6  # 2 epochs x (2 step saves, last; best when it improves)
    real = ck.atomic_write
    for target in range(writes):
        phase = PHASES[target % len(PHASES)]
        root = tmp_path / f"{target}-{phase}"
        wrapper, calls = killing(real, target, phase)
        monkeypatch.setattr(ck, "atomic_write", wrapper)
        with pytest.raises(Killed):
            run_training(config(root, **TINY))
        monkeypatch.setattr(ck, "atomic_write", real)
        run = root / "run"
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], target
        try:
            run_training(config(root, **TINY, resume=str(run)))
        except (CheckpointError, ValueError) as refusal:
            message = str(refusal)
            if target == 0 and phase != "after-rename":  # nothing saved yet: start again
                assert "no checkpoint at" in message
                run_training(config(root, **TINY))
            else:  # killed after the last save completed: the run is done
                assert "has finished 2 epochs" in message, message
        same(outcome(run), whole)


def test_a_sigkill_inside_a_write_leaves_no_half_file_and_no_blocking_lock(whole, tmp_path,
                                                                          capsys):
    whole, _ = whole
    root = tmp_path / "sigkill"
    script = (
        "import os, signal, sys\n"
        "import torch\n"
        "torch.set_num_threads(%d)  # the parent's: the same float sums, bit for bit\n"
        "sys.path.insert(0, %r)\n"
        "from intvit.models import checkpoint as ck\n"
        "from intvit.train.loop import run_training\n"
        "from test_train import config\n"
        "real, calls = ck.atomic_write, [0]\n"
        "def atomic_write(path, write):\n"
        "    calls[0] += 1\n"
        "    if calls[0] < 3:\n"
        "        return real(path, write)\n"
        "    def dying(tmp):\n"
        "        write(tmp)\n"
        "        os.truncate(tmp, os.path.getsize(tmp) // 3)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(path, dying)\n"
        "ck.atomic_write = atomic_write\n"
        "run_training(config(__import__('pathlib').Path(%r), **%r))\n"
    ) % (torch.get_num_threads(), str(Path(__file__).parent), str(root), TINY)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = root / "run"
    assert [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the killed write's
    capsys.readouterr()
    run_training(config(root, **TINY, resume=str(run)))
    assert "took over the lock" in capsys.readouterr().out
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    same(outcome(run), whole)
