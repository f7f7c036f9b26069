"""Distributed (gloo, CPU) runs: observers agree across ranks, and ``torchrun ... intvit
train`` trains, evaluates and writes a checkpoint that loads and evaluates alone.

Ranks are real processes: ``torch.multiprocessing`` spawns them for the unit tests
(a ``file://`` rendezvous in a temporary folder; results come back as files), and the
end-to-end test runs ``python -m torch.distributed.run --standalone`` as a subprocess.
Every collective has a timeout, so a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SMALL

from intvit.data import DataConfig, build_loader
from intvit.evaluation import evaluate
from intvit.models import build_quant_model, model_config
from intvit.models.checkpoint import load_checkpoint
from intvit.models.factory import ModelSource, make_model
from intvit.quant import QuantConfig, RangeObserver, calibrate

WORLD = 2
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)
SPAWN_TIMEOUT = 120  # seconds for the whole spawned group (start, jobs, shut down)
TORCHRUN_TIMEOUT = 240

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


# --- spawned ranks -------------------------------------------------------------------

def _rank_main(rank: int, world: int, store: str, out: str) -> None:
    """Entry point of every spawned rank: join the group, run every job of :data:`JOBS`
    in order, save the results (a job that raises leaves its traceback instead)."""
    import traceback

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=COLLECTIVE_TIMEOUT)
    results = {}
    try:
        for name, job in JOBS.items():
            try:
                results[name] = job(rank, world)
            except Exception:  # noqa: BLE001 - reported by the test that reads it
                results[name] = traceback.format_exc()
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> dict[str, list]:
    """Spawn the ranks once (starting a rank costs seconds) and run every job there;
    ``spawned[job]`` is the list of the ranks' results."""
    tmp = tmp_path_factory.mktemp("spawned")
    context = mp.start_processes(_rank_main, args=(WORLD, str(tmp / "store"), str(tmp)),
                                 nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while not context.join(timeout=1):  # raises ProcessRaisedException if a rank dies
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the spawned ranks did not finish in {SPAWN_TIMEOUT} s")
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {job: [r[job] for r in ranks] for job in JOBS}


def results_of(spawned: dict[str, list], job: str) -> list:
    for rank, result in enumerate(spawned[job]):
        if isinstance(result, str):
            pytest.fail(f"job {job!r} raised on rank {rank}:\n{result}")
    return spawned[job]


def rank_data(rank: int, shape=(4, 6, 5)) -> torch.Tensor:
    """Different data on every rank: its own seed, and its own offset and spread."""
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(shape, generator=g) * (1 + rank) + 3 * rank - 1


def _job_observers(rank: int, world: int) -> dict:
    observers = {m: RangeObserver(m) for m in ("minmax", "ema", "percentile")}
    seen = []
    for step in range(2):  # two updates: the running min/max is global after each
        x = rank_data(rank + 10 * step)
        seen.append(x)
        for observer in observers.values():
            observer.observe(x)
    return {"ranges": {m: (o.low.clone(), o.high.clone()) for m, o in observers.items()},
            "seen": torch.stack(seen)}


def _small_quant_model(seed: int = 0, **quant) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_quant_model(model_config("custom", **SMALL), QuantConfig(**quant))


def _job_calibrate(rank: int, world: int) -> dict:
    """The same model on every rank, each rank calibrating on its own batches."""
    model = _small_quant_model()
    batches = [(rank_data(rank + 10 * i, (3, 3, 32, 32)), torch.zeros(3, dtype=torch.long))
               for i in range(2)]
    calibrate(model, batches, len(batches), progress=False)
    return {"state": {k: v for k, v in model.state_dict().items() if k.endswith(("low", "high"))},
            "batches": batches}


def _job_evaluate_odd(rank: int, world: int) -> dict:
    """Distributed evaluation of 63 images on 2 ranks (a size the ranks cannot split)."""
    model = _small_quant_model(enabled=False)  # the float model: no calibration needed
    data = DataConfig(data="synthetic", img_size=32, in_chans=3, batch_size=16, seed=0,
                      val_limit=63)
    return {"images": evaluate(model, build_loader(data, "val", distributed=True),
                               progress=False).images}


JOBS = {"observers": _job_observers, "calibrate": _job_calibrate,
        "evaluate_odd": _job_evaluate_odd}


def test_range_observer_ranges_agree_across_ranks(spawned):
    """Each rank observes different data; afterwards both hold the same low/high, and
    for min/max they are the global minimum and maximum of everything any rank saw."""
    results = results_of(spawned, "observers")
    everything = torch.cat([r["seen"].flatten() for r in results])
    for method in ("minmax", "ema", "percentile"):
        (low0, high0), (low1, high1) = (r["ranges"][method] for r in results)
        assert torch.equal(low0, low1) and torch.equal(high0, high1), method
        assert torch.isfinite(low0) and torch.isfinite(high0) and low0 < high0, method
    low, high = results[0]["ranges"]["minmax"]
    assert float(low) == float(everything.min())
    assert float(high) == float(everything.max())
    # the ranks really saw different ranges: a rank's own min/max is not the global one
    assert float(results[0]["seen"].max()) < float(high)
    assert float(results[1]["seen"].min()) > float(low)


def test_distributed_calibration_equals_calibration_on_all_batches(spawned):
    """Two ranks calibrating one model on their own batches end with the ranges a single
    process gets from all the batches."""
    results = results_of(spawned, "calibrate")
    assert results[0]["state"].keys() == results[1]["state"].keys()
    for key, value in results[0]["state"].items():
        assert torch.equal(value, results[1]["state"][key]), key
    single = _small_quant_model()
    everything = results[0]["batches"] + results[1]["batches"]
    calibrate(single, everything, len(everything), progress=False)
    state = single.state_dict()
    for key, value in results[0]["state"].items():
        assert torch.allclose(value, state[key], rtol=1e-6, atol=0), key


def test_distributed_evaluation_counts_every_image_once(spawned):
    """63 validation images on 2 ranks are 63 images, not 64: evaluation shards without
    the padding repeats of DistributedSampler."""
    results = results_of(spawned, "evaluate_odd")
    assert [r["images"] for r in results] == [63, 63]


# --- torchrun end to end -------------------------------------------------------------

ARCH = dict(model="custom", input_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DATA = dict(data="synthetic", train_limit=128, val_limit=64, batch_size=16)


def _flags(values: dict) -> list[str]:
    return [part for key, value in values.items()
            for part in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    """One ``torchrun --nproc_per_node=2 -m intvit train`` run, shared by the tests below."""
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
           "--standalone", "-m", "intvit", "train", *_flags(ARCH), *_flags(DATA),
           "--epochs", "1", "--lr", "1e-3", "--gelu", "ppoly", "--softmax", "ppoly",
           "--layernorm", "ivit", "--output-dir", str(out), "--json", str(out / "h.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH"))
        if p)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=TORCHRUN_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in {TORCHRUN_TIMEOUT} s\n"
                    f"stdout:\n{err.stdout}\nstderr:\n{err.stderr}")
    return proc, out, " ".join(cmd)


def _report(proc: subprocess.CompletedProcess, cmd: str) -> str:
    return (f"$ {cmd}\nexit {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-12000:]}")


def test_torchrun_training_writes_a_checkpoint_that_loads_and_evaluates(torchrun):
    proc, out, cmd = torchrun
    assert proc.returncode == 0, _report(proc, cmd)
    assert (out / "last.safetensors").is_file(), _report(proc, cmd)
    history = json.loads((out / "h.json").read_text())
    assert history["checkpoint"] == str(out / "last.safetensors")
    (epoch,) = history["history"]
    assert epoch["epoch"] == 1 and math.isfinite(epoch["train_loss"])
    assert epoch["val_images"] == DATA["val_limit"]  # both shards counted, once each
    model, meta = load_checkpoint(out / "last.safetensors")
    assert meta["quant"].gelu == "ppoly" and meta["quant"].layernorm == "ivit"
    assert meta["model"].embed_dim == ARCH["embed_dim"]
    data = DataConfig(data="synthetic", img_size=32, in_chans=3,
                      batch_size=DATA["batch_size"], seed=0, val_limit=DATA["val_limit"])
    alone = evaluate(model, build_loader(data, "val"), progress=False)
    # the integer model gives the same predictions alone as in the 2-rank evaluation
    assert alone.images == DATA["val_limit"]
    for k in ("top1", "top3", "top5"):
        assert alone.as_dict()[k] == epoch[f"val_{k}"], k
    assert alone.loss == pytest.approx(epoch["val_loss"], rel=1e-9)


def test_torchrun_calibrates_the_model_it_trains(torchrun):
    """Every rank builds the same model before calibrating it on its own shard: the
    trained checkpoint's ranges are those of one process calibrating that model on the
    whole training set (ranges stay frozen during QAT)."""
    proc, out, cmd = torchrun
    assert proc.returncode == 0, _report(proc, cmd)
    trained, meta = load_checkpoint(out / "last.safetensors")
    torch.manual_seed(0)
    model, _ = make_model(ModelSource("custom", overrides=dict(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)),
        meta["quant"])
    data = DataConfig(data="synthetic", img_size=32, in_chans=3,
                      batch_size=DATA["batch_size"], seed=0, train_limit=DATA["train_limit"])
    loader = build_loader(data, "train")
    calibrate(model, loader, len(loader), progress=False)
    expected, got = model.state_dict(), trained.state_dict()
    wrong = [k for k in expected if k.endswith(("low", "high"))
             and not torch.allclose(expected[k], got[k], rtol=1e-5)]
    assert not wrong, f"{len(wrong)} ranges differ, e.g. " + ", ".join(
        f"{k}: {float(got[k]):.4f} vs {float(expected[k]):.4f}" for k in wrong[:3])


def test_torchrun_only_rank_zero_reports(torchrun):
    proc, out, cmd = torchrun
    assert proc.returncode == 0, _report(proc, cmd)
    assert proc.stdout.count("checkpoint: ") == 1, proc.stdout
