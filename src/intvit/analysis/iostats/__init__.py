"""Per-layer activation statistics of a quantized model, recorded while it evaluates.

>>> with IOStats(model) as stats:          # forward hooks on every QuantModule
...     evaluate(model, loader)            # the integer model (model.eval())
>>> stats.save("runs/io.csv")              # io.csv + io.samples.safetensors

Every :class:`~intvit.quant.QuantModule` gets a forward hook. An exception inside a
hook propagates out of the forward pass (nothing is caught); the hooks are removed when
the ``with`` block ends, whether it ends normally or not.

**What a row holds** (:meth:`IOStats.to_csv`, one row per QuantModule, in module order,
also for modules that were never called: ``calls`` is then 0 and the rest empty):

``layer``, ``type``, ``op``, ``approx``
    the module's path in the model, its class, and for the non-linear modules
    (QuantGELU, QuantSoftmax, QuantLayerNorm) the op and the approximation it runs.
``mode``
    the quantization mode(s) the module ran in (``int`` for the evaluated model;
    several joined by ``|``).
``calls``
    forward calls seen.

then, for each tensor slot ``in`` (the first input), ``in2`` (the second input: the
residual of a QuantAct, the right operand ``b`` of a QuantMatMul; empty elsewhere) and
``out`` (the output):

``<slot>_dtype``
    the value's dtype (``int64`` in INT mode).
``<slot>_shape``
    the shape, ``x``-separated (``4x17x32``); a dimension that differed between calls
    is ``*`` (the last batch may be smaller), a rank that differed makes it ``varies``.
``<slot>_numel``
    elements seen, summed over calls.
``<slot>_min``, ``<slot>_max``
    the smallest and largest integer seen (over all calls). With a scale these are the
    integers ``q`` of ``x = q * scale``: the int64 values themselves in INT mode, the
    rounded ``value / scale`` in FAKE (QAT) mode. Without a scale (the model's float
    input, FLOAT/CALIBRATE modes) they are the raw values.
``<slot>_bits``, ``<slot>_signed``
    the width the module declares for that tensor (activation bits of a QuantAct's
    output, ``in_bits`` of a linear/kernel input, 32 for accumulators, the kernel's
    ``out_bits`` and signedness); empty where the module declares none (a QuantAct's
    inputs). In FLOAT/CALIBRATE mode the output widths are declared as in the integer
    modes (a module's own), the input widths only as of an earlier FAKE/INT call: a
    module's operand widths are those of the values it is given, and a float value has
    no integer format (:mod:`intvit.quant.qtensor`), so before such a call ``in_bits``,
    ``in_signed`` and ``in2_*`` are empty.
``<slot>_bits_used``
    the width the observed integer range needs (signed, or unsigned where the
    declared tensor is unsigned).
``<slot>_scale_min``, ``<slot>_scale_max``, ``<slot>_scale_numel``
    the scale: equal min and max and ``numel`` 1 for a per-tensor scale, the range of
    a per-channel scale (after a linear layer) with its length; over all calls.
``out_at_limit``
    output elements at either end of the declared output range (saturated, or exactly
    at the limit).
``samples``
    integer inputs kept for this layer (see below; 0 for the linear modules).

**Input samples of the non-linear modules** (:meth:`IOStats.save_samples`): for each
QuantGELU, QuantSoftmax and QuantLayerNorm a uniform sample of its integer inputs,
drawn by reservoir sampling (:class:`Reservoir`; seeded, so the same run keeps the
same sample, listed in the order the model saw it): single values for GELU, whole rows (the last dimension) for softmax and
LayerNorm, at most ``sample_size`` values per layer (``sample_size // row_length`` rows,
at least one). The file is a ``.safetensors`` with

* one tensor per layer, named by the layer path: shape ``(n,)`` for GELU,
  ``(rows, row_length)`` for softmax and LayerNorm; the smallest of int8/int16/int32/
  int64 that holds the layer's declared input width (read it back as int64);
* metadata ``format = "intvit.iostats.samples/1"`` and ``layers`` = a JSON object, one
  entry per layer: ``op``, ``type``, ``approx``, ``in_scale`` (the input scale, a
  float), ``in_bits``, ``out_bits``, ``out_scale`` (the output scale the layer ran
  with), ``row_length`` (null for GELU; LayerNorm's ``dim``, softmax's row length),
  ``unit`` (``value`` or ``row``), ``seen`` (values or rows seen), ``kept``, ``seed``,
  ``sample_size``.

Samples are taken whenever the input has a scale (INT mode, and FAKE mode through the
rounded ``value / scale``); a layer whose input scale changes between calls, or a row
op whose row length does, is an error (a sample must have one scale to be measured).

:func:`intvit.analysis.from_stats.analyze_from_stats` measures approximations on them.
"""

from .files import SAMPLES_FORMAT, samples_path
from .recorder import SAMPLE_SIZE, IOStats
from .reservoir import Reservoir
from .summary import (COLUMNS, SLOT_FIELDS, SLOTS, LayerStats, TensorStats, bits_needed,
                      declared_widths)

__all__ = ["COLUMNS", "IOStats", "LayerStats", "Reservoir", "SAMPLES_FORMAT", "SAMPLE_SIZE",
           "SLOTS", "SLOT_FIELDS", "TensorStats", "bits_needed", "declared_widths",
           "samples_path"]
