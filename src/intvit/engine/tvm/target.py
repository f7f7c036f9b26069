"""Importing Apache TVM and describing this CPU to it: whether TVM (with its Relax ONNX
frontend) is installed, the LLVM target of the host, and whether a target has AVX-512
VNNI (which decides whether :mod:`.offload`'s kernels are tensorized to ``vpdpbusd``)."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = ("pip install intvit[tvm]  (pins apache-tvm==0.27.0 and "
                "apache-tvm-ffi==0.1.14.post0)")


def tvm_available() -> bool:
    """Whether TVM with its Relax ONNX frontend can be imported."""
    try:
        import_tvm()
    except ImportError:
        return False
    return True


def import_tvm():
    """The ``tvm`` package; ``ImportError`` naming ``pip install intvit[tvm]`` when TVM or
    its Relax ONNX frontend cannot be imported."""
    try:
        import tvm
        from tvm import relax  # noqa: F401
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        raise ImportError(f"the TVM backend needs Apache TVM 0.27: {INSTALL_HINT} ({exc})"
                          ) from exc
    return tvm


def host_target(threads: int = 2) -> dict[str, Any]:
    """The LLVM target of this CPU as a TVM target dict: ``mcpu`` is LLVM's host CPU name
    (``znver5`` on an AVX-512 Zen 5) when LLVM knows it, otherwise plain ``llvm``."""
    tvm = import_tvm()
    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(threads)}
    try:
        codegen = tvm.target.codegen
        cpu = str(codegen.llvm_get_system_cpu())
        if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(
                cpu, str(codegen.llvm_get_system_triple())):
            target["mcpu"] = cpu
    except Exception:  # pragma: no cover - LLVM without host detection
        pass
    return target


def has_vnni(target) -> bool:
    """Whether the LLVM target ``target`` has AVX-512 VNNI (``vpdpbusd``)."""
    tvm = import_tvm()
    try:
        return bool(tvm.target.codegen.llvm_cpu_has_features(["avx512vnni"], target))
    except Exception:  # pragma: no cover
        return False

