"""Provider discovery and choice: never a silent fallback."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from gpux.engine import providers
from gpux.errors import ProviderUnavailableError, ProviderUnknownError


def test_priority_order_is_the_documented_one() -> None:
    assert [p.alias for p in providers.PRIORITY] == [
        "tensorrt", "cuda", "rocm", "migraphx", "coreml", "directml", "openvino", "cpu"]


def test_available_is_onnxruntimes_list_in_priority_order_without_non_hardware_providers() -> None:
    have = providers.available()
    assert have[-1] == "CPUExecutionProvider"
    assert set(have) <= set(ort.get_available_providers())
    assert "AzureExecutionProvider" not in have
    order = [p.ort_name for p in providers.PRIORITY]
    assert have == sorted(have, key=order.index)


def test_resolve_auto_named_and_aliases() -> None:
    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers.resolve("auto", have) == have
    assert providers.resolve(None, have) == have
    assert providers.resolve("cuda", have) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers.resolve("TRT", have) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert providers.resolve("CPUExecutionProvider", have) == ["CPUExecutionProvider"]


def test_unavailable_provider_names_what_is_available() -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        providers.resolve("rocm", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "'rocm'" in str(info.value) and "available: cuda, cpu" in str(info.value)


def test_unknown_provider_lists_known_ones() -> None:
    with pytest.raises(ProviderUnknownError, match="unknown provider 'warp'.*tensorrt, cuda"):
        providers.resolve("warp", ["CPUExecutionProvider"])


def test_loading_on_a_missing_gpu_is_an_error_not_a_fallback(model_dir) -> None:  # type: ignore[no-untyped-def]
    import gpux

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; the no-fallback path is covered by test_gpu")
    with pytest.raises(ProviderUnavailableError, match="available: .*cpu"):
        gpux.load(model_dir / "mlp.onnx", provider="cuda")


@pytest.mark.gpu
def test_cuda_really_runs_when_present(model_dir) -> None:  # type: ignore[no-untyped-def]
    import gpux

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider")
    m = gpux.load(model_dir / "mlp.onnx", provider="cuda", placement=True)
    m.run({"x": [[1, 2, 3, 4]]})
    assert m.providers[0] == "cuda" and m.ort_providers[0] == "CUDAExecutionProvider"
    assert m.placement is not None and m.placement.get("cuda", 0) > 0
