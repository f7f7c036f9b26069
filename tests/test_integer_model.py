"""The eval-mode integer model: frozen integer constants, integer ops only in its body,
every tensor on the device of its input, and constants refreshed when weights change."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import randomize, small_model
from intvit.models import build_quant_model, family, model_config
from intvit.quant import QuantConfig, calibrate

SWIN = family("swin").small  # the registry's smallest Swin


def swin_model():
    torch.manual_seed(0)
    return build_quant_model(model_config("custom", **SWIN), QuantConfig())


FAMILIES = {"vit": small_model, "swin": swin_model}


def calibrated(family: str):
    model = randomize(FAMILIES[family]())
    calibrate(model, [(torch.randn(4, 3, 32, 32), None)], 1, progress=False)
    return model


class DtypeLog(TorchDispatchMode):
    """Every dispatched op with the dtypes of its tensor inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtypes = lambda tree: [t.dtype for t in tree_leaves(tree)  # noqa: E731
                               if isinstance(t, torch.Tensor)]
        self.ops.append((str(func.overloadpacket.__name__), dtypes((args, kwargs)),
                         dtypes(out)))
        return out


def is_float(dtypes):
    return any(d.is_floating_point for d in dtypes)


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_body_dispatches_integer_ops_only(family):
    model = calibrated(family).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(x)  # freezes the constants
        with DtypeLog() as log:
            again = model(x)
    assert torch.equal(first, again)
    ops = log.ops
    # the body: from the first integer result (the input quantization's cast) to the
    # last op reading integers (the output dequantization's cast)
    start = next(i for i, (_, _, out) in enumerate(ops) if out and not is_float(out))
    end = max(i for i, (_, ins, _) in enumerate(ops) if ins and not is_float(ins))
    body = ops[start + 1:end]
    floats = [(name, ins, out) for name, ins, out in body if is_float(ins + out)]
    assert len(body) > 50 and not floats, floats[:5]
    # before it only the input quantization, after it only the dequantization
    assert len(ops[:start + 1]) <= 6 and len(ops[end:]) <= 3, (ops[:start + 1], ops[end:])


@pytest.mark.parametrize("family", FAMILIES)
def test_constants_are_frozen_once_and_refreshed(family):
    model = calibrated(family).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    frozen = {n: t for n, t in model.named_buffers() if ".frozen_" in n or
              n.startswith("frozen_")}
    weights = [n for n in frozen if n.endswith("frozen_weight")]
    assert weights and all(frozen[n].dtype == torch.int8 for n in weights)
    assert all(frozen[n].dtype == torch.int32 for n in frozen if n.endswith("frozen_bias")
               and "attn" not in n.rsplit(".", 2)[-2:])
    assert not any("frozen_" in k for k in model.state_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not any("frozen_" in n for n, _ in model.named_buffers())
    with torch.no_grad():
        head = model.head if family == "vit" else model.head.fc
        head.weight.mul_(-1)
    model.eval()
    with torch.no_grad():
        flipped = model(x)
    assert not torch.equal(before, flipped)
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_tensor_is_created_without_its_device(family):
    """Training step and eval forward with the default device set to meta while model
    and inputs live on the CPU: a tensor created without naming its device lands on
    meta and the step fails."""
    model = calibrated(family)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.set_default_device("meta")
    try:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            first = model(x)
            second = model(x)
    finally:
        torch.set_default_device(None)
    assert first.device.type == "cpu" and torch.equal(first, second)
    assert all(t.device.type == "cpu" for t in model.buffers())


def test_exact_logits_of_a_large_cpu_batch_run_in_chunks_with_the_same_integers():
    """The evaluation of the eval-mode model takes a CPU batch CPU_BATCH_CHUNK images at a
    time (chunks of 8 and 3 here): the logits are those of the whole batch at once, in
    order."""
    from intvit.device import CPU_BATCH_CHUNK, cpu_chunks
    from intvit.evaluation import exact_logits

    model = calibrated("vit").eval()
    x = torch.randn(CPU_BATCH_CHUNK + 3, 3, 32, 32)
    assert [len(c) for c in cpu_chunks(x)] == [CPU_BATCH_CHUNK, 3]
    assert len(cpu_chunks(x.to("meta"))) == 1  # other devices take the batch whole
    with torch.no_grad():
        whole = model.forward_int(x)
        got = exact_logits(model, x)
    assert torch.equal(got, whole.value.double() * whole.scale.double())
