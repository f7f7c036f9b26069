"""The c engine's profile by op class (``intvit bench --profile`` with ``c``): the
profiled build gives the eval-mode logits, its node times add up to the run's wall time,
a product-heavy program spends most of it in the int8 products, and the bench measures it
in a fresh process."""

import ctypes
import time

import pytest
import torch
from conftest import SMALL
from test_c_export import cache, pytestmark  # noqa: F401  (the C tests' compiler skip, own cache)
from test_engine import FAMILIES, calibrated, images
from test_profile import table_ms

from intvit.engine import export_program
from intvit.engine.c.profile import ProfiledCEngine
from intvit.engine.profile import CLASSES, profile_c, write_profile_spec
from intvit.models import model_config

# 16 tokens of width 256: the products (K = 256 or 1024) outweigh the row kernels
WIDE = dict(SMALL, embed_dim=256, num_heads=4, depth=1)


@pytest.fixture(scope="module")
def wide():
    model = calibrated(model_config("custom", **WIDE), FAMILIES["ivit"])
    return model, export_program(model)


@pytest.mark.parametrize("threads", [1, 2])
def test_profiled_build_gives_the_models_logits_and_times_every_node(wide, threads):
    model, program = wide
    engine = ProfiledCEngine(program, threads)
    x = images(3, seed=4)
    engine.node_seconds(x, repeats=1)  # threads started, pages touched
    start = time.perf_counter()
    seconds, logits = engine.node_seconds(x, repeats=4)
    wall = time.perf_counter() - start  # the warm-up run and 4 timed runs
    assert torch.equal(logits, model.forward_int(x).value)
    assert seconds.shape == (len(program.nodes),) and (seconds >= 0).all()
    # the ticks cover each run from before the quantization to the last node: all of the
    # wall time but the Python calls between images (loose: other processes share the
    # cores, and a thread descheduled between two images counts against the ticks)
    assert 0.25 * wall < 5 * seconds.sum() and 4 * seconds.sum() <= wall


def test_product_heavy_program_spends_most_time_in_int8_products(wide):
    _, program = wide
    profile = profile_c(program, images(4, seed=2), threads=1, repeats=5)
    assert list(profile) == list(CLASSES) and all(v >= 0 for v in profile.values())
    assert profile["int8 products"] > 0.5 * sum(profile.values())
    assert all(profile[c] > 0 for c in ("requantization", "GELU", "Softmax", "LayerNorm"))


def test_node_times_are_medians_over_runs(wide):
    """A thread descheduled in one timed run (a second on one node, as a shared machine
    does) leaves the profile as it is: each node's time is its median over the runs."""
    engine = ProfiledCEngine(wide[1])
    real, calls = engine.lib, []

    class Spiking:  # the library, with one run of one node a second slower
        intvit_model_set_threads = real.intvit_model_set_threads

        def intvit_profile_run(self, image, logits, scratch, ticks):
            done = real.intvit_profile_run(image, logits, scratch, ticks)
            calls.append(1)
            if len(calls) == 3:  # the second timed run (the first run warms up)
                t = (ctypes.c_int64 * (engine.nodes + 1)).from_address(ticks)
                for i in range(5, engine.nodes + 1):
                    t[i] += 10**9
            return done

    quiet, _ = engine.node_seconds(images(1), repeats=3)
    engine.lib = Spiking()
    spiked, _ = engine.node_seconds(images(1), repeats=3)
    assert spiked[4] < 0.1  # node 4 took the second in run 2 only (a mean: 0.33 s)
    assert spiked.sum() < quiet.sum() + 0.1


def test_repeats_must_be_positive(wide):
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        ProfiledCEngine(wide[1]).node_seconds(images(1), repeats=0)


def test_bench_profiles_the_c_engine_in_its_own_process(wide, tmp_path, monkeypatch):
    """``python -m intvit.engine.c.profile SPEC`` answers every class's time per batch, and
    the bench's table is made of them (this process refuses to profile)."""
    from intvit.engine import bench

    def refuse(*_):
        raise AssertionError("profiled in the bench's own process")

    answers = []

    def recorded(module, spec, what):
        answers.append(run_module(module, spec, what))
        return answers[-1]

    run_module = bench.run_module
    monkeypatch.setattr(ProfiledCEngine, "node_seconds", refuse)
    monkeypatch.setattr(bench, "run_module", recorded)
    _, program = wide
    spec = write_profile_spec(program, {1: images(1, seed=1), 3: images(3, seed=3)}, 2,
                              tmp_path)
    table = bench.profile_in_fresh_process("c", "wide", spec)
    profiles = answers[0]["profiles"]
    assert list(profiles) == ["1", "3"]
    for profile in profiles.values():
        assert list(profile) == list(CLASSES) and all(v >= 0 for v in profile.values())
        assert all(profile[c] > 0 for c in ("int8 products", "requantization", "GELU",
                                            "Softmax", "LayerNorm"))
    assert sum(profiles["3"].values()) > sum(profiles["1"].values())  # 3 images, then 1
    assert ("| wide, c engine (2 OpenMP threads, images one after another): op class "
            "| batch 1: ms | share | batch 3: ms | share |") in table
    ms = table_ms(table)
    assert list(ms) == [*CLASSES, "total"]
    assert all(abs(ms[c][column] - profiles[b][c]) <= 0.051
               for column, b in enumerate(("1", "3")) for c in CLASSES)
