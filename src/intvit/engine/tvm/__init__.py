"""Compile an integer ONNX graph with Apache TVM (0.27, Relax) for this CPU and run it.

| module | job |
|---|---|
| :mod:`.target` | importing TVM, the LLVM target of this host, whether it has AVX-512 VNNI |
| :mod:`.process` | the process-wide state a module touches: ``TVM_NUM_THREADS``, native stderr |
| :mod:`.vnni` | TIR kernels for u8 x s8 -> i32 matmuls with ``vpdpbusd`` |
| :mod:`.offload` | the Relax rewrite of ``MatMulInteger`` into those kernels |
| :mod:`.schedule` | multi-threaded schedules of the fused elementwise/reduction kernels |
| :mod:`.pipeline` | the CPU Relax pipeline and two rewrites that widen operator fusion |
| :mod:`.module` | :class:`TvmModule`: import, rewrite, build, call with numpy arrays |
| :mod:`.profile` | a module's time by op class, each kernel the VM calls timed (``intvit bench --profile``) |

Every rewrite here changes where and how a value is computed, never the value: outputs
equal ONNX Runtime's bit for bit. Measured compile times and latencies, and how TVM's
thread pool and PyTorch's share a machine: ``benchmarks/README.md`` (section "TVM
backend").

Requires ``pip install intvit[tvm]`` (``apache-tvm==0.27.0``,
``apache-tvm-ffi==0.1.14.post0``; ``apache-tvm-ffi`` 0.1.15 crashes TVM 0.27). Importing
this package does not import TVM; building a :class:`TvmModule` does.
"""

from .module import TvmModule
from .offload import offload_matmul_integer
from .pipeline import cpu_pipeline, fold_stacked_min_max, fusion_passes, mark_gathers_injective
from .process import NOISE, native_stderr_without, pool_threads
from .schedule import schedule_cpu_func, schedule_cpu_kernels
from .target import INSTALL_HINT, has_vnni, host_target, tvm_available

__all__ = ["INSTALL_HINT", "NOISE", "TvmModule", "cpu_pipeline", "fold_stacked_min_max",
           "fusion_passes", "has_vnni", "host_target", "mark_gathers_injective",
           "native_stderr_without", "offload_matmul_integer", "pool_threads",
           "schedule_cpu_func", "schedule_cpu_kernels", "tvm_available"]
