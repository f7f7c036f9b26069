"""``intvit export``, ``intvit verify`` and ``intvit inspect``: the engine's commands."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from .. import fileio
from ..engine.engines import ENGINES
from ..engine.formats import FORMATS, export_format
from ..engine.sources import load_program
from .common import check_outputs, positive_int, write_json


# ------------------------------------------------------------------------------ export


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a calibrated or trained checkpoint")
    p.add_argument("--program", help="instead of --checkpoint: an integer program "
                   "(--format c only)")
    p.add_argument("--out", required=True,
                   help="the file (int: .safetensors, onnx: .onnx) or folder (golden, c)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="int (the integer program, default; .onnx names choose onnx), onnx "
                        "(ONNX graph, integer-only body), golden (per-layer test vectors), "
                        "c (a dependency-free C99 library)")
    p.add_argument("--max-ram", metavar="BYTES",
                   help="c: refuse an export whose scratch buffer exceeds this (e.g. 512K, "
                        "2M, 300000)")
    p.add_argument("--images", type=positive_int, default=2,
                   help="images in the golden vectors")
    p.add_argument("--seed", type=int, default=0, help="seed of the golden/probe images")


def run_export(args: argparse.Namespace) -> int:
    from ..engine.export import export_program, probe_images
    from ..models.checkpoint import load_checkpoint

    fmt = export_format(args.format, args.out)
    fileio.check_output(args.out, "--out", folder=fmt in ("golden", "c"))
    if fmt in ("golden", "c"):
        fileio.check_replaceable_folder(args.out)
    if fmt == "c":
        fileio.check_distinct({"--out": args.out}, {"--checkpoint": args.checkpoint,
                                                     "--program": args.program})
        return export_c(args)
    if not args.checkpoint:
        raise ValueError(f"--format {fmt} exports from --checkpoint CK (a calibrated or "
                         "trained model); --program works with --format c only")
    fileio.check_distinct({"--out": args.out}, {"--checkpoint": args.checkpoint})
    model, _ = load_checkpoint(args.checkpoint)
    program = export_program(model, info={"checkpoint": str(args.checkpoint)})
    out = Path(args.out)
    if fmt == "int":
        program.save(out)
        size = out.stat().st_size
        print(f"integer program: {out} ({len(program.nodes)} nodes, {size / 2**20:.2f} MiB, "
              f"{size / (4 * sum(p.numel() for p in model.parameters())):.2f}x the float32 "
              "model)")
    elif fmt == "onnx":
        from ..engine.onnx_export import to_onnx
        fileio.write_bytes(out, to_onnx(program).SerializeToString())
        print(f"ONNX graph: {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    else:
        from ..engine.golden import write_golden
        images = probe_images(model, args.images, args.seed)
        write_golden(program, images, out)
        print(f"golden vectors for {args.images} images, {len(program.nodes)} nodes: "
              f"{out}/manifest.json (check with `intvit verify --golden {out}`)")
    return 0


def parse_bytes(text: str) -> int:
    """``300000``, ``512K``, ``2M`` (KiB and MiB) as bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in units else t
    if not number.isdigit():
        raise ValueError(f"--max-ram takes a byte count such as 300000, 512K or 2M; got {text!r}")
    return int(number) * scale


def export_c(args: argparse.Namespace) -> int:
    """``export --format c``: the C library of the program, within ``--max-ram``."""
    from ..engine.c import generate
    program = load_program(args.program, args.checkpoint)
    library = generate(program)
    figures = library.memory
    if args.max_ram is not None and figures.scratch_bytes > parse_bytes(args.max_ram):
        raise ValueError(f"the model needs a {figures.scratch_bytes}-byte scratch buffer "
                         f"({figures.scratch_bytes / 1024:.1f} KiB), more than --max-ram "
                         f"{args.max_ram}; export a smaller model (fewer tokens or a narrower "
                         "embedding) or raise the limit")
    out = library.write(args.out)
    print(f"C library: {out}/ ({len(library.files)} files; build and API in "
          f"{out}/README.md)\n  " + "\n  ".join(figures.lines()))
    return 0


# ------------------------------------------------------------------------------ verify


def verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a calibrated or trained checkpoint")
    p.add_argument("--program", help="an integer program (engines other than 'model')")
    p.add_argument("--engines", default="model,int,onnx",
                   help="comma-separated engines to compare: model (the eval-mode model, "
                        f"needs --checkpoint), {', '.join(ENGINES)} (default model,int,onnx)")
    p.add_argument("--data", default="synthetic", help="dataset whose validation images run")
    p.add_argument("--limit", type=int, default=64, help="images (default 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--golden", metavar="DIR",
                   help="instead: replay golden vectors written by `export --format golden`")
    p.add_argument("--json", metavar="FILE")


def run_verify(args: argparse.Namespace) -> int:
    from ..engine.parity import compare_engines, engine_list
    from ..engine.sources import validation_batches
    from ..engine.engines import make_engine
    from ..progress import tqdm

    check_outputs(args, {"--json": "json"}, {},
                  {"--checkpoint": "checkpoint", "--program": "program", "--golden": "golden"})
    if args.golden:
        from ..engine.golden import check_golden
        report = check_golden(args.golden)
        print(f"golden vectors: {report.nodes} nodes replayed, {len(report.mismatches)} differ"
              + "".join(f"\n  {m}" for m in report.mismatches))
        write_json(args.json, "golden-verify", {"nodes": report.nodes,
                                                "mismatches": report.mismatches})
        return 0 if report.ok else 1
    kinds = engine_list(args.engines, bool(args.checkpoint))
    program = load_program(args.program, args.checkpoint)
    engines = {}
    for kind in kinds:
        if kind == "model":
            from ..models.checkpoint import load_checkpoint
            model, _ = load_checkpoint(args.checkpoint)
            model.eval()
            engines[kind] = lambda x, m=model: m.forward_int(x).value
        else:
            engines[kind] = make_engine(kind, program)
    batches = [b for b, _ in validation_batches(program, args.data, args.limit,
                                                args.batch_size)]
    counts = compare_engines(engines, tqdm(batches, desc="verify", leave=False))
    failed = False
    for name, c in counts.items():
        failed |= c["differing_logits"] > 0
        print(f"{kinds[0]} vs {name}: {c['differing_logits']} of {c['logits']} logits differ "
              f"({c['differing_images']} of {c['images']} images)")
    write_json(args.json, "verify", {"reference": kinds[0], "engines": counts})
    return 1 if failed else 0


# ------------------------------------------------------------------------------ inspect


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an integer program (.safetensors) or an exported .onnx")
    p.add_argument("--json", metavar="FILE", help="write the full graph (program) or the "
                   "node list with output dtypes (onnx)")


def run_inspect(args: argparse.Namespace) -> int:
    from ..engine.program import IntProgram, ProgramError

    check_outputs(args, {"--json": "json"}, {}, {"file": "file"})
    if str(args.file).endswith(".onnx"):
        return _inspect_onnx(args)
    program = IntProgram.load(args.file)
    ops = Counter(n.op for n in program.nodes)
    print(f"{args.file}: intvit program, {len(program.nodes)} nodes, {len(program.tensors)} "
          f"tensors ({program.nbytes() / 2**20:.2f} MiB)")
    model = program.meta["model"]
    quant = program.meta["quant"]
    name = model.get("timm_name") or (f"{model['arch']} dim {model['embed_dim']} depth "
                                      f"{model['depth']}")
    print(f"  model: {name}, input {program.input_shape}, "
          f"{program.num_classes} classes; gelu {quant['gelu']}, softmax {quant['softmax']}, "
          f"layernorm {quant['layernorm']}")
    print("  ops: " + ", ".join(f"{op} x{n}" for op, n in ops.most_common()))
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in program.tensors.values())
    print("  tensor dtypes: " + ", ".join(f"{d} x{n}" for d, n in dtypes.most_common()))
    from ..engine.c import memory
    try:
        figures = memory(program)
        print("  C export (--format c): " + "; ".join(figures.lines()))
        c_memory = asdict(figures)
    except ProgramError as err:
        print(f"  C export (--format c): not possible: {err}")
        c_memory = {"error": str(err)}
    write_json(args.json, "program-graph", {**program.graph(), "c_memory": c_memory})
    return 0


def _inspect_onnx(args: argparse.Namespace) -> int:
    """``inspect FILE.onnx``: the graph's op types and output dtypes."""
    import onnx

    from ..engine.onnx_export import op_types
    try:
        graph = onnx.load(args.file)
    except Exception as err:  # noqa: BLE001  (onnx raises protobuf's own errors)
        raise ValueError(f"{args.file} is not a readable ONNX model (truncated, or "
                         f"not ONNX?): {type(err).__name__}: {err}") from None
    nodes = op_types(graph)
    table = Counter((op, ",".join(types)) for _, op, types in nodes)
    print(f"{args.file}: {len(nodes)} nodes")
    for (op, types), n in sorted(table.items()):
        print(f"  {op:16s} -> {types:12s} x{n}")
    write_json(args.json, "onnx-nodes", {
        "file": str(args.file),
        "nodes": [{"name": n, "op": op, "outputs": t} for n, op, t in nodes]})
    return 0
