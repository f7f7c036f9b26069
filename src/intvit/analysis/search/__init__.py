"""Search for the best combination of integer approximations (``intvit search``).

Every ``gelu x softmax x layernorm`` combination of the given name lists is evaluated
post-training (PTQ) on a validation set with the *integer* model, ranked by top-1 (ties
by hardware cost, then loss), and placed on an accuracy-vs-cost Pareto front::

    result = search(model, val_loader, ["ivit", "ibert", "ppoly"], ["ivit", "ibert"],
                    ["ivit", "ibert"], per_block=True, qat_top=2, train_loader=train)
    print(result.markdown()); result.plot("pareto.png"); result.as_dict()

**Calibrated once.** Calibration runs the model in float, so activation ranges do not
depend on the approximations. The model is calibrated once (on ``train_loader`` if its
observers are not yet); each combination is then built under its own
:class:`~intvit.quant.QuantConfig` and given the *whole* state dict of that model, float
weights and observer buffers alike (the module structure does not depend on the
approximation names, so every key matches), and evaluated -- no recalibration.

**Failures.** Names are checked with :func:`intvit.approx.build` before anything runs
(an unknown family, such as ``ppoly`` for layernorm, or a bad parameter is an error
listing what is accepted). A kernel that refuses the model's scales at run time (a
``ValueError`` such as "ShiftGELU with n=30 overflows 32 bits ...; use n <= 25") makes
that combination *failed*, recorded with its message; the search goes on.

**Hardware cost** of a combination, per image, from each kernel's :class:`Cost` (counts
per element and per row) for the shapes the model really has. For a ViT/DeiT with
``N = (img_size / patch_size)^2 + 1`` tokens, width ``D``, ``H`` heads, depth ``L`` and
MLP width ``F = int(D * mlp_ratio)``:

| op        | elements per image   | rows per image  | row length |
|-----------|----------------------|-----------------|------------|
| GELU      | ``L * N * F``        | --              | --         |
| Softmax   | ``L * H * N^2``      | ``L * H * N``   | ``N``      |
| LayerNorm | ``(2L + 1) * N * D`` | ``(2L + 1) * N``| ``D``      |

(:func:`~intvit.analysis.hwcost.vit_shapes`; the shapes are read from one traced forward,
:func:`~intvit.analysis.hwcost.kernel_sites`, which gives the same numbers for a ViT and also covers
Swin; the cost model lives in :mod:`intvit.analysis.hwcost`.) Then

    ops(k)  = elements * c.k + rows * c.per_row[k]            for each op kind k
    cost    = sum over sites, kinds of  W[k] * ops(k)

with the weights :data:`COST_WEIGHTS` ``W``: ``mul 1, shift 1, add 1, cmp 1, div 8,
sqrt 64`` (an integer square root is Newton's iteration, up to 7 divisions plus a
leading-zero count: about eight divisions). The widest intermediate (``widest_bits``)
and the widest requantization product (``requant_bits``) are the maxima over all
kernels; both are reported with the per-op costs. ``float`` variants are not integer-only:
such a combination is evaluated and ranked but has no integer cost and is left off the
Pareto front.

**Per-block search** (``per_block=True``): greedy, from the best global combination. For
each block (``blocks.i`` in a ViT, ``layers.s.blocks.j`` in a Swin; a LayerNorm outside
the blocks, such as the final ``norm``, is a group of its own) and each op in it, every
other name of that op's list is tried there; a change is kept when it ranks strictly
better (higher top-1, or equal top-1 and lower cost, or equal both and lower loss), so
the result is never below the start. Today a :class:`QuantConfig` holds one name per op,
so a per-block choice is set on the modules themselves (``QuantGELU``/``QuantSoftmax``/
``QuantLayerNorm`` hold ``.approx``; their kernel cache ``_kernels`` is cleared). The
choice is a :class:`Candidate` with ``overrides`` ``{group: {op: name}}``, written in the
JSON. To reproduce it (also on a loaded checkpoint, which stores only the global names)::

    cand = Candidate.from_dict(json.load(open("search.json"))["per_block"]["best"]["candidate"])
    model = materialize(calibrated_model, cand)        # a new model, or in place:
    apply_candidate(load_checkpoint(path)[0], cand)

**Short QAT** (``qat_top=k``): the best ``k`` PTQ combinations are fine-tuned for
``qat_steps`` steps (AdamW, cross-entropy, ``model.train()`` = fake-quantized forward
with the kernels' integers, ranges frozen) and evaluated again.

The package's parts: :mod:`.candidates` (what a combination is, how a model takes it),
:mod:`.results` (evaluated combinations, ranking, the Pareto front), :mod:`.render` (the
Markdown table, the plot and the files), :mod:`.qat` (the short fine-tuning) and
:mod:`.algorithm` (the search itself); ``intvit search`` is :mod:`intvit.cli.analysis`.
"""

from .algorithm import calibrated_base, evaluate_candidate, per_block_search, search
from .candidates import (DEFAULT_LISTS, SEARCH_OPS, Candidate, SearchError, apply_candidate,
                         check_lists, materialize)
from .qat import short_qat
from .results import Entry, PerBlockResult, SearchResult, Trial, pareto_front, rank

__all__ = ["DEFAULT_LISTS", "SEARCH_OPS", "Candidate", "Entry", "PerBlockResult",
           "SearchError", "SearchResult", "Trial", "apply_candidate", "calibrated_base",
           "check_lists", "evaluate_candidate", "materialize", "pareto_front",
           "per_block_search", "rank", "search", "short_qat"]
