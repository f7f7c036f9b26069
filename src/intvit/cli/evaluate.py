"""``intvit eval``: a checkpoint's integer model, or its exported program on an engine,
evaluated on a dataset."""

from __future__ import annotations

import argparse

from ..device import resolve_device
from ..engine.engines import ENGINES
from .common import (check_outputs, data_arguments, data_config, device_argument,
                     evaluation_figures, pipeline_options, recorded_pipeline, write_json)

ENGINE_CHOICES = ("auto", "model", *ENGINES)


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="an intvit checkpoint")
    p.add_argument("--program", help="an integer program from `intvit export` (engines int, "
                   "onnx, tvm)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help="model: the eval-mode quantized model; int, onnx, tvm, c: the integer "
                        "program (exported from --checkpoint if no --program) on PyTorch "
                        "integer ops, ONNX Runtime, TVM or the C library compiled for this "
                        "host; all give the same integers. auto (default): the model on a "
                        "GPU or with --io-stats, else the fastest engine this CPU can build")
    p.add_argument("--debug-overflow", action="store_true",
                   help="engine int: check every declared width and every node's int32 "
                        "output at run time (slower)")
    data_arguments(p, required=True)
    p.add_argument("--json", metavar="FILE", help="write top1/top3/top5/loss/images_per_s")
    p.add_argument("--io-stats", metavar="FILE",
                   help="record every quantized layer's integer input/output ranges, scales, "
                        "widths and shapes to FILE (CSV; .parquet needs pandas and pyarrow) "
                        "and samples of the GELU/Softmax/LayerNorm inputs next to it "
                        "(FILE's stem + .samples.safetensors; see `analyze --from-stats`)")
    device_argument(p)


def run_eval(args: argparse.Namespace) -> int:
    from ..data import build_loader
    from ..evaluation import evaluate
    from ..models.checkpoint import load_checkpoint

    check_outputs(args, {"--json": "json", "--io-stats": "io_stats"}, {},
                  {"--checkpoint": "checkpoint", "--program": "program"})
    if args.engine == "auto":
        args.engine = _auto_engine(args)
    if args.engine != "model":
        return _eval_engine(args)
    if not args.checkpoint:
        raise ValueError("eval --engine model needs --checkpoint")
    model, meta = load_checkpoint(args.checkpoint)
    model.to(resolve_device(args.device))
    loader = build_loader(data_config(args, model, meta["info"]), "val")
    if args.io_stats:
        from ..analysis.iostats import IOStats

        with IOStats(model) as stats:
            result = evaluate(model, loader)
        table, samples = stats.save(args.io_stats)
        print(f"activation statistics written to {table}"
              + (f", input samples to {samples}" if samples else ""))
    else:
        result = evaluate(model, loader)
    print(result.summary())
    write_json(args.json, "evaluation", evaluation_figures(result, "model"))
    return 0


def _auto_engine(args: argparse.Namespace) -> str:
    """``eval --engine auto``: the model where it must run (a GPU, --io-stats), else the
    fastest engine of this machine; says what it chose."""
    from ..engine.engines import fastest_engine

    if args.io_stats or (args.checkpoint and resolve_device(args.device).type != "cpu"):
        chosen, why = "model", "--io-stats records its layers" if args.io_stats else \
            "it runs on the GPU"
    else:
        chosen, why = fastest_engine(), "the fastest exact engine on this CPU"
    print(f"engine auto: {chosen} ({why})")
    return chosen


def _eval_engine(args: argparse.Namespace) -> int:
    """``eval --engine int|onnx|tvm|c``: the integer program on a dataset."""
    from ..data import build_loader
    from ..engine.sources import load_program, program_data
    from ..engine.engines import make_engine
    from ..evaluation import evaluate
    from ..models.checkpoint import read_metadata

    if args.io_stats:
        raise ValueError("--io-stats records the model's layers: use --engine model")
    program = load_program(args.program, args.checkpoint)
    engine = make_engine(args.engine, program, debug=args.debug_overflow)
    recorded = recorded_pipeline(read_metadata(args.checkpoint)["info"]) \
        if args.checkpoint and not args.program else {}
    data = program_data(program, args.data, batch_size=args.batch_size, workers=args.workers,
                        seed=args.seed, train_limit=args.train_limit, val_limit=args.val_limit,
                        skip_bad_images=args.skip_bad_images,
                        **pipeline_options(args, recorded))
    result = evaluate(engine, build_loader(data, "val"), desc=f"eval ({args.engine})")
    print(f"engine {args.engine}: {result.summary()}")
    write_json(args.json, "evaluation", evaluation_figures(result, args.engine))
    return 0
