"""The search over combinations of integer approximations (``intvit search``)."""

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL, randomize
from intvit.analysis.search import algorithm as search_algorithm
from intvit.cli import analysis as analysis_cli
from intvit.analysis.hwcost import (COST_WEIGHTS, HardwareCost, Site, block_of,
                                    combine_costs, kernel_sites, vit_shapes)
from intvit.analysis.search import (Candidate, Entry, SearchError, apply_candidate,
                                    materialize, pareto_front, rank, search)
from intvit.approx import Cost
from intvit.data import DataConfig, build_loader
from intvit.evaluation import evaluate
from intvit.models import build_quant_model, model_config
from intvit.models.checkpoint import save_checkpoint
from intvit.models.factory import requantized
from intvit.quant import QuantConfig, calibrate

FAILING_GELU = "ivit_n_30"  # ShiftGELU with n = 30 overflows 32 bits at every input scale


# ------------------------------------------------------------------ pure functions


def entry(label: str, top1, cost, loss=1.0, integer_only=True, error=None) -> Entry:
    g, s, n = label.split("/")
    hw = None if cost is None else HardwareCost(cost, {}, {}, 32, 63, {},
                                                integer_only=integer_only)
    return Entry(Candidate(g, s, n), top1=None if error else top1, loss=loss, cost=hw,
                 error=error)


def labels(entries):
    return [e.candidate.label for e in entries]


def test_ranking_by_accuracy_then_cost_then_loss():
    entries = [entry("ivit/ivit/ivit", 80.0, 300),
               entry("ibert/ivit/ivit", 82.0, 500),
               entry("ppoly/ivit/ivit", 82.0, 400, loss=2.0),   # tie on top-1: cheaper wins
               entry("ivit/ibert/ivit", 82.0, 400, loss=1.5),   # tie on both: lower loss
               entry("ivit/ppoly/ivit", 90.0, None, error="ShiftGELU ... n <= 25"),
               entry("float/ivit/ivit", 81.0, 100, integer_only=False)]
    assert labels(rank(entries)) == ["ivit/ibert/ivit", "ppoly/ivit/ivit", "ibert/ivit/ivit",
                                     "float/ivit/ivit", "ivit/ivit/ivit"]


def test_pareto_front_on_hand_made_results():
    entries = [entry("ivit/ivit/ivit", 80.0, 300),     # cheapest: on the front
               entry("ibert/ivit/ivit", 85.0, 500),    # on the front
               entry("ppoly/ivit/ivit", 84.0, 600),    # dominated by ibert/ivit/ivit
               entry("ivit/ibert/ivit", 79.0, 300),    # dominated (same cost, less accurate)
               entry("ivit/ppoly/ivit", 90.0, 900),    # most accurate: on the front
               entry("ppoly/ppoly/ivit", 90.0, 900),   # equal to it: neither dominates
               entry("ibert/ibert/ivit", 95.0, None, error="refused"),   # failed: ignored
               entry("float/ivit/ivit", 99.0, 10, integer_only=False)]  # no integer cost
    assert labels(pareto_front(entries)) == ["ivit/ivit/ivit", "ibert/ivit/ivit",
                                             "ivit/ppoly/ivit", "ppoly/ppoly/ivit"]
    assert pareto_front([]) == []


def test_cost_formula_by_hand():
    gelu = Site("blocks.0.mlp.act", "gelu", "blocks.0", elements=100, rows=2, row_length=50)
    soft = Site("blocks.0.attn.softmax", "softmax", "blocks.0", elements=40, rows=4,
                row_length=10)
    norm = Site("norm", "layernorm", "norm", elements=30, rows=3, row_length=10)
    parts = [(gelu, Cost(mul=2, shift=1, add=3, div=1, cmp=0, widest_bits=30)),
             (soft, Cost(mul=1, add=2, cmp=1, per_row={"div": 1}, widest_bits=40)),
             (norm, Cost(mul=1, add=1, per_row={"div": 2, "sqrt": 1}, widest_bits=32,
                         requant_bits=63))]
    cost = combine_costs(parts)
    # gelu: 100 * (2 + 1 + 3 + 8*1); softmax: 40 * (1 + 2 + 1) + 4 * 8;
    # layernorm: 30 * (1 + 1) + 3 * (2*8 + 64)
    assert cost.by_op == {"gelu": 1400, "softmax": 192, "layernorm": 300}
    assert cost.weighted == 1892
    assert cost.counts == {"mul": 270, "shift": 100, "add": 410, "div": 110, "cmp": 40,
                           "sqrt": 3}
    assert (cost.widest_bits, cost.requant_bits, cost.integer_only) == (40, 63, True)
    assert COST_WEIGHTS["div"] == 8 and COST_WEIGHTS["mul"] == 1
    mixed = combine_costs(parts[:2] + [(norm, Cost(integer_only=False))])
    assert not mixed.integer_only and mixed.float_ops == ["layernorm"]


def test_candidate_names_and_overrides():
    c = Candidate("ivit", "ivit_n_15", "ibert")           # ivit_n_15 is softmax's default
    assert c.softmax == "ivit"
    c2 = c.with_override("blocks.1", "gelu", "ppoly").with_override("norm", "layernorm", "ibert")
    assert c2.overrides == (("blocks.1", "gelu", "ppoly"),)  # same as global: dropped
    assert c2.name("gelu", "blocks.1") == "ppoly" and c2.name("gelu", "blocks.0") == "ivit"
    assert Candidate.from_dict(json.loads(json.dumps(c2.as_dict()))) == c2
    assert block_of("blocks.3.attn.softmax") == "blocks.3"
    assert block_of("layers.1.blocks.0.mlp.act") == "layers.1.blocks.0"
    assert block_of("layers.1.downsample.norm") == "layers.1.downsample.norm"
    assert block_of("norm") == "norm"


# ------------------------------------------------------------------ real searches


@pytest.fixture(scope="module")
def setup():
    """A small ViT pre-trained a few float steps on the synthetic data, calibrated."""
    torch.manual_seed(0)
    cfg = model_config("custom", **SMALL)
    data = DataConfig(data="synthetic", img_size=32, in_chans=3, batch_size=64,
                      synthetic_train=128, synthetic_val=64)
    train, val = build_loader(data, "train"), build_loader(data, "val")
    float_model = randomize(build_quant_model(cfg, QuantConfig(enabled=False)))
    optimizer = torch.optim.AdamW(float_model.parameters(), lr=1e-3)
    float_model.train()
    for _ in range(4):
        for images, labels in train:
            loss = F.cross_entropy(float_model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model = requantized(float_model, QuantConfig())  # the same weights, ranges empty
    calibrate(model, train, 2, progress=False)
    return dict(float_model=float_model, model=model, train=train, val=val)


def test_traced_shapes_match_the_vit_formula(setup):
    model = setup["model"]
    sites = kernel_sites(model)
    assert model.mode.name in ("INT", "FAKE")  # the float trace leaves the mode as it was
    totals = {}
    for s in sites:
        t = totals.setdefault(s.op, dict(elements=0, rows=0, row_length=s.row_length))
        t["elements"] += s.elements
        t["rows"] += s.rows
    assert totals == vit_shapes(model.cfg)
    assert {s.group for s in sites} == {"blocks.0", "blocks.1", "norm"}


def test_search_2x2x1_table_json_plot(setup, tmp_path):
    model = setup["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = search(model, setup["val"], ["ivit", "ibert"], ["ivit", "ibert"], ["ivit"],
                    progress=False)
    assert len(result.entries) == 4 and all(e.ok for e in result.entries)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.calibration_batches == 0  # calibrated already: not again
    ranked = result.ranking()
    assert [e.key() for e in ranked] == sorted(e.key() for e in ranked)
    assert result.best is ranked[0] and result.best in result.front()
    for e in result.entries:
        assert e.cost.integer_only and e.cost.weighted == sum(e.cost.by_op.values()) > 0
        assert e.cost.widest_bits >= 8 and e.images == 64
    # The search's evaluation is the integer model with the calibrated state: the same
    # as building that configuration by hand and evaluating it.
    hand = build_quant_model(model.cfg, QuantConfig(gelu="ibert", softmax="ivit"))
    hand.load_state_dict(model.state_dict())
    found = next(e for e in result.entries if e.candidate.global_names == ("ibert", "ivit", "ivit"))
    expected = evaluate(hand, setup["val"], progress=False)
    assert (found.top1, found.loss) == (expected.top1, expected.loss)

    paths = result.write(tmp_path / "out")
    table = paths["table"].read_text()
    assert table.count("| ivit |") + table.count("| ibert |") >= 4 and "Pareto" in table
    data = json.loads(paths["json"].read_text())
    assert [e["rank"] for e in data["entries"]] == [1, 2, 3, 4]
    assert data["best"]["label"] == result.best.candidate.label
    assert data["pareto"] == [e.candidate.label for e in result.front()]
    assert data["op_shapes"]["softmax"]["elements"] == 2 * 2 * 17 * 17
    assert paths["plot"].stat().st_size > 10_000
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("engine", ["int", "auto"])
def test_an_engine_evaluates_every_combination_to_the_model_s_figures(setup, engine):
    """The engine's integers are the model's: the same top-1 and loss for each, and a
    float reference kernel (no integer program) is evaluated by the model itself."""
    lists = (["ibert", "float"], ["ivit"], ["ivit"])
    by_model = search(setup["model"], setup["val"], *lists, progress=False)
    by_engine = search(setup["model"], setup["val"], *lists, progress=False, engine=engine)
    figures = lambda r: [(e.candidate.label, e.top1, e.loss) for e in r.entries]  # noqa: E731
    assert figures(by_engine) == figures(by_model) and all(e.ok for e in by_engine.entries)


def test_best_is_at_least_each_single_family_and_failures_are_recorded(setup):
    result = search(setup["model"], setup["val"], ["ivit", "ibert", "ppoly", FAILING_GELU],
                    ["ivit", "ibert", "ppoly"], ["ivit", "ibert"], progress=False)
    assert len(result.entries) == 4 * 3 * 2
    failed = result.failed
    assert len(failed) == 6 and all(e.candidate.gelu == FAILING_GELU for e in failed)
    assert all("overflows 32 bits" in e.error and "ivit_n_" in e.error for e in failed)
    assert all(e.top1 is None and e.cost is None for e in failed)
    by_names = {e.candidate.global_names: e for e in result.entries}
    for family in (("ivit",) * 3, ("ibert",) * 3, ("ppoly", "ppoly", "ivit"),
                   ("ppoly", "ppoly", "ibert")):
        assert by_names[family].ok
        assert result.best.top1 >= by_names[family].top1
    assert FAILING_GELU in result.markdown() and "failed: ShiftGELU" in result.markdown()
    records = result.as_dict()["entries"]
    assert [r["rank"] for r in records[-6:]] == [None] * 6
    assert all(r["error"] for r in records[-6:])


def test_bad_names_rejected_before_running(setup, monkeypatch):
    ran = []
    monkeypatch.setattr(search_algorithm, "evaluate_candidate", lambda *a, **k: ran.append(a))
    uncalibrated = build_quant_model(setup["model"].cfg, QuantConfig())
    with pytest.raises(SearchError) as err:
        search(uncalibrated, setup["val"], ["ivit", "nonsense"], ["ivit_m_3"],
               ["ivit", "ppoly"], progress=False)
    text = str(err.value)
    assert "nothing was run" in text
    assert "gelu 'nonsense'" in text and "softmax 'ivit_m_3'" in text
    assert "layernorm 'ppoly'" in text and "ibert" in text   # lists what is accepted
    with pytest.raises(SearchError, match="list is empty"):
        search(setup["model"], setup["val"], [], ["ivit"], ["ivit"], progress=False)
    with pytest.raises(SearchError, match="train_loader"):
        search(setup["model"], setup["val"], ["ivit"], ["ivit"], ["ivit"], qat_top=1,
               progress=False)
    with pytest.raises(SearchError, match="not calibrated"):
        search(uncalibrated, setup["val"], ["ivit"], ["ivit"], ["ivit"], progress=False)
    assert ran == []


def test_per_block_search_and_short_qat(setup):
    model, val = setup["model"], setup["val"]
    lists = (["ivit", "ibert", "ppoly"], ["ivit", "ppoly"], ["ivit", "ibert"])
    result = search(model, val, *lists, per_block=True, qat_top=2, train_loader=setup["train"],
                    qat_steps=2, qat_lr=1e-4, progress=False)
    pb = result.per_block
    assert pb.start is result.best
    assert pb.best.top1 >= pb.start.top1 and pb.best.key() <= pb.start.key()
    assignment = pb.assignment()
    assert set(assignment) == {"blocks.0", "blocks.1", "norm"}
    assert set(assignment["blocks.0"]) == {"gelu", "softmax", "layernorm"}
    assert set(assignment["norm"]) == {"layernorm"}
    for ops in assignment.values():
        for op, name in ops.items():
            assert name in dict(zip(("gelu", "softmax", "layernorm"), lists))[op]
    # every other name of each op's list is tried in each block (after a change, the
    # name it replaced is tried too)
    per_site = {}
    for t in pb.trials:
        per_site.setdefault((t.group, t.op), []).append(t.name)
    assert len(per_site) == 2 * 3 + 1
    for (group, op), names in per_site.items():
        size = len(dict(zip(("gelu", "softmax", "layernorm"), lists))[op])
        assert size - 1 <= len(names) <= size
    assert sum(t.accepted for t in pb.trials) >= len(pb.best.candidate.overrides)
    # Reproducible from the JSON: the same integer model, the same accuracy.
    saved = json.loads(json.dumps(result.as_dict()))["per_block"]["best"]["candidate"]
    again = evaluate(materialize(model, Candidate.from_dict(saved)), val, progress=False)
    assert (again.top1, again.loss) == (pb.best.top1, pb.best.loss)
    assert "Per-block search" in result.markdown()
    # Short QAT on the best two: re-evaluated, recorded, ranked.
    tuned = [e for e in result.entries if e.qat]
    # the best two are tuned (listed in search order, which ties need not follow)
    assert sorted(tuned, key=result.ranking().index) == result.ranking()[:2]
    for e in tuned:
        assert e.qat["error"] is None and 0 <= e.qat["top1"] <= 100 and e.qat["steps"] == 2
    assert result.qat_ranking()[0].qat["top1"] == max(e.qat["top1"] for e in tuned)
    assert result.as_dict()["best_after_qat"] is not None and "QAT top-1" in result.markdown()


def test_apply_candidate_sets_block_modules(setup):
    model = materialize(setup["model"], Candidate())
    cand = Candidate().with_override("blocks.1", "gelu", "ibert") \
                      .with_override("blocks.0", "softmax", "ppoly")
    apply_candidate(model, cand)
    assert model.blocks[1].mlp.act.approx.name == "ibert"
    assert model.blocks[0].mlp.act.approx.name == "ivit"
    assert model.blocks[0].attn.softmax.approx.name == "ppoly"
    assert model.blocks[1].attn.softmax.approx.name == "ivit"
    with torch.no_grad():
        images = next(iter(setup["val"]))[0][:8]
        mixed = model(images)
        plain = materialize(setup["model"], Candidate())(images)
    assert not torch.equal(mixed, plain)
    with pytest.raises(SearchError, match="does not have"):
        apply_candidate(model, Candidate().with_override("blocks.7", "gelu", "ibert"))


def test_command_on_a_float_checkpoint(setup, tmp_path, capsys):
    path = save_checkpoint(tmp_path / "float.safetensors", setup["float_model"])
    parser = argparse.ArgumentParser(prog="intvit search")
    analysis_cli.search_arguments(parser)
    out = tmp_path / "search"
    args = parser.parse_args(["--checkpoint", str(path), "--data", "synthetic",
                              "--train-limit", "128", "--val-limit", "64", "--batch-size", "64",
                              "--calib-batches", "1", "--gelu-list", "ivit,ibert",
                              "--softmax-list", "ivit", "--layernorm-list", "ivit",
                              "--out", str(out), "--json", str(tmp_path / "s.json")])
    args.command_line = "intvit search --checkpoint float.safetensors"  # main sets it
    assert analysis_cli.run_search(args) == 0
    printed = capsys.readouterr().out
    assert "calibrated activation ranges on 1 training batches" in printed
    assert f"plot: {out / 'pareto.png'}" in printed and "| rank |" in printed
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["calibration_batches"] == 1 and data["images"] == 64
    assert {p.name for p in out.iterdir()} == {"pareto.png", "search.json", "search.md",
                                              "run.json"}
    assert json.loads((out / "run.json").read_text())["command"] == args.command_line
    args.layernorm_list = "ivit,ppoly"
    with pytest.raises(SearchError, match="layernorm 'ppoly'"):
        analysis_cli.run_search(args)


@pytest.mark.skipif("search" not in __import__("intvit.cli").cli.COMMANDS,
                    reason="intvit search is not wired into the CLI yet")
def test_cli_search_command(setup, tmp_path):
    from intvit.cli import main

    path = save_checkpoint(tmp_path / "q.safetensors", setup["model"])
    assert main(["search", "--checkpoint", str(path), "--data", "synthetic", "--val-limit",
                 "32", "--gelu-list", "ibert", "--softmax-list", "ivit,ibert",
                 "--layernorm-list", "ivit", "--out", str(tmp_path / "o")]) == 0
    assert main(["search", "--checkpoint", str(path), "--data", "synthetic",
                 "--layernorm-list", "ppoly", "--out", str(tmp_path / "o")]) == 2
