"""Float baselines (torch eager, ORT FP32, ORT dynamic int8) and the timing harness."""

import numpy as np
import pytest
import timm
import torch

from intvit.engine.baselines import INPUT_NAME, export_float_onnx, ort_dynamic_int8, ort_session
from intvit.engine.timing import Timing, measure, threads


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def outputs(workdir) -> dict[str, np.ndarray]:
    """Each baseline's logits for one batch of 3 from a tiny random timm ViT."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=64, depth=2, num_heads=2, num_classes=10)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = export_float_onnx(model, images, workdir / "model_fp32.onnx")
    int8 = ort_dynamic_int8(fp32, workdir / "model_int8_dynamic.onnx")
    feed = {INPUT_NAME: images.numpy()}
    with torch.no_grad():
        reference = model.eval()(images).numpy()
    return {"torch_fp32": reference,
            "ort_fp32": ort_session(fp32).run(None, feed)[0],
            "ort_int8_dynamic": ort_session(int8).run(None, feed)[0]}


def test_baselines_shapes(outputs):
    assert all(out.shape == (3, 10) for out in outputs.values())


def test_ort_fp32_matches_torch(outputs):
    np.testing.assert_allclose(outputs["ort_fp32"], outputs["torch_fp32"], atol=1e-4, rtol=0)


def test_ort_int8_dynamic_close_to_torch(outputs):
    ref, int8 = outputs["torch_fp32"], outputs["ort_int8_dynamic"]
    assert not np.allclose(int8, ref, rtol=0, atol=1e-6), "int8 model was not quantized"
    assert np.linalg.norm(int8 - ref) / np.linalg.norm(ref) < 0.2


@pytest.mark.parametrize("name", ["model_fp32.onnx", "model_int8_dynamic.onnx"])
def test_onnx_batch_axis_is_dynamic(outputs, workdir, name):
    image = np.zeros((1, 3, 32, 32), np.float32)
    (logits,) = ort_session(workdir / name, threads=1).run(None, {INPUT_NAME: image})
    assert logits.shape == (1, 10)


def test_measure_stats():
    calls = []
    timing = measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert isinstance(timing, Timing) and timing.repeats == 5 and len(calls) == 7
    assert 0 <= timing.p10_ms <= timing.median_ms <= timing.p90_ms


def test_measure_min_time_extends_repeats():
    timing = measure(lambda: sum(range(1000)), warmup=0, repeats=1, min_time=0.01)
    assert timing.repeats > 1


@pytest.mark.parametrize("repeats", [0, -1])
def test_measure_rejects_no_repeats(repeats):
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure(lambda: None, repeats=repeats)


def test_threads_restores():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_threads_none_keeps_the_count_and_restores_what_the_body_changed():
    before = torch.get_num_threads()
    with threads():
        assert torch.get_num_threads() == before
        torch.set_num_threads(1 if before > 1 else 2)  # as an OpenMP library may
    assert torch.get_num_threads() == before
