"""``intvit export``, ``intvit verify`` and ``intvit inspect``: the engine's commands
(registered in :mod:`intvit.cli`)."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..progress import tqdm

from .engines import ENGINES, make_engine
from .program import IntProgram, ProgramError

FORMATS = ("int", "onnx", "golden", "c")
SUFFIXES = {"int": ".safetensors", "onnx": ".onnx"}  # golden and c: a folder


def _engine_list(text: str, have_checkpoint: bool) -> list[str]:
    """``--engines a,b,...``: at least two known, distinct engines."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    known = ["model", *ENGINES]
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; engines: "
                         f"{', '.join(known)}, e.g. --engines model,int,onnx")
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise ValueError(f"--engines names {', '.join(twice)} more than once; an engine "
                         f"compared with itself proves nothing")
    if len(kinds) < 2:
        raise ValueError(f"verify compares at least two engines, got {text!r}; e.g. "
                         f"--engines model,int,onnx (engines: {', '.join(known)})")
    if "model" in kinds and not have_checkpoint:
        raise ValueError("engine 'model' needs --checkpoint")
    return kinds


def export_format(fmt: str | None, out: str) -> str:
    """The format asked for (or the one ``out``'s extension names), checked against
    ``out``: ``.safetensors`` for int, ``.onnx`` for onnx, a folder for golden and c."""
    suffix = Path(out).suffix
    fmt = fmt or ("onnx" if suffix == ".onnx" else "int")
    if fmt in SUFFIXES and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; --format {fmt} writes one file, e.g. "
                         f"{Path(out) / ('model' + SUFFIXES[fmt])}")
    want = SUFFIXES.get(fmt)
    if want and suffix != want:
        raise ValueError(f"--format {fmt} writes a {want} file, but --out {out} ends in "
                         f"{suffix or 'no extension'}; name it {Path(out).stem}{want}"
                         + ("" if fmt == "onnx" else " (or use --format onnx for ONNX)"))
    if fmt in ("golden", "c") and suffix in SUFFIXES.values():
        raise ValueError(f"--format {fmt} writes a folder, but --out {out} is named like "
                         f"a file; give a folder name, e.g. {Path(out).with_suffix('')}")
    return fmt


def load_program(args: argparse.Namespace) -> IntProgram:
    """``--program FILE``, or the program exported on the fly from ``--checkpoint``."""
    if getattr(args, "program", None):
        return IntProgram.load(args.program)
    if not getattr(args, "checkpoint", None):
        raise ValueError("give --checkpoint CK (a calibrated or trained model) or --program "
                         "FILE (from `intvit export`)")
    from ..models.checkpoint import load_checkpoint
    from .export import export_program

    model, _ = load_checkpoint(args.checkpoint)
    return export_program(model, info={"checkpoint": str(args.checkpoint)})


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
    from ..cli import positive_int
    p.add_argument("--images", type=positive_int, default=2,
                   help="images in the golden vectors")
    p.add_argument("--seed", type=int, default=0, help="seed of the golden/probe images")


def run_export(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint
    from .export import export_program, probe_images

    from .. import fileio

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
        from .onnx_export import to_onnx
        fileio.write_bytes(out, to_onnx(program).SerializeToString())
        print(f"ONNX graph: {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    else:
        from .golden import write_golden
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
    from .c import generate
    program = load_program(args)
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


def compare_engines(engines: dict, batches) -> dict[str, dict[str, int]]:
    """Run every engine on the same batches; count logits and images that differ from the
    first engine's."""
    names = list(engines)
    counts = {n: {"images": 0, "logits": 0, "differing_logits": 0, "differing_images": 0}
              for n in names[1:]}
    for images in batches:
        reference = engines[names[0]](images)
        for name in names[1:]:
            got = engines[name](images)
            differs = got != reference
            c = counts[name]
            c["images"] += images.shape[0]
            c["logits"] += differs.numel()
            c["differing_logits"] += int(differs.sum())
            c["differing_images"] += int(differs.any(dim=1).sum())
    return counts


def run_verify(args: argparse.Namespace) -> int:
    from ..cli import check_outputs, write_json

    check_outputs(args, {"--json": "json"}, {},
                  {"--checkpoint": "checkpoint", "--program": "program", "--golden": "golden"})
    if args.golden:
        from .golden import check_golden
        report = check_golden(args.golden)
        print(f"golden vectors: {report.nodes} nodes replayed, {len(report.mismatches)} differ"
              + "".join(f"\n  {m}" for m in report.mismatches))
        write_json(args.json, {"nodes": report.nodes, "mismatches": report.mismatches})
        return 0 if report.ok else 1
    kinds = _engine_list(args.engines, bool(args.checkpoint))
    program = load_program(args)
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
    write_json(args.json, {"reference": kinds[0], "engines": counts})
    return 1 if failed else 0


def program_data(program: IntProgram, data: str, **fields):
    """The data configuration of a dataset at the program's input size and channels."""
    from ..data import DataConfig
    c, size, _ = program.input_shape
    return DataConfig(data=data, img_size=size, in_chans=c, **fields)


def validation_batches(program: IntProgram, data: str, limit: int, batch_size: int):
    """The first ``limit`` validation images of a dataset, at the program's input size."""
    from ..data import build_loader
    return build_loader(program_data(program, data, batch_size=batch_size, val_limit=limit),
                        "val")


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an integer program (.safetensors) or an exported .onnx")
    p.add_argument("--json", metavar="FILE", help="write the full graph (program) or the "
                   "node list with output dtypes (onnx)")


def run_inspect(args: argparse.Namespace) -> int:
    from ..cli import check_outputs, write_json

    check_outputs(args, {"--json": "json"}, {}, {"file": "file"})
    if str(args.file).endswith(".onnx"):
        import onnx

        from .onnx_export import op_types
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
        write_json(args.json, [{"name": n, "op": op, "outputs": t} for n, op, t in nodes])
        return 0
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
    from .c import memory
    try:
        figures = memory(program)
        print("  C export (--format c): " + "; ".join(figures.lines()))
        c_memory = asdict(figures)
    except ProgramError as err:
        print(f"  C export (--format c): not possible: {err}")
        c_memory = {"error": str(err)}
    write_json(args.json, {**program.graph(), "c_memory": c_memory})
    return 0


