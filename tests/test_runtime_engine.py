"""The runtime's engines compute the same outputs under every batching, and the parity check finds a bad graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medclf.errors import ConfigError, DataError
from medclf.runtime.decision import calibrated_probabilities, softmax
from medclf.runtime.engine import OnnxRuntimeEngine, TorchEngine, check_engine, create_graph_engine
from medclf.runtime.onnx import export_graph, parity_gap


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(image).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def graph() -> bytes:
    return export_graph(_Net().eval(), (torch.zeros(2, 3, 8, 8),), ["image"], ["logits"])


def _feed(n: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(n).normal(size=(n, 3, 8, 8)).astype(np.float32)}


def test_every_batching_gives_the_torch_outputs(graph: bytes) -> None:
    feed = _feed(7)
    ref = TorchEngine(_Net(), inputs=["image"]).run(feed)[0]
    per_core = OnnxRuntimeEngine(graph, threads=2)
    assert per_core.per_image and per_core.outputs == ("logits",)
    one_core = OnnxRuntimeEngine(graph, threads=1)
    assert not one_core.per_image
    batch_only = OnnxRuntimeEngine(graph, threads=2, single_image_session=False)
    for engine in (per_core, one_core, batch_only):
        for size in (1, 3, 0):  # calls of 1 and 3 images (a short last call), and the whole batch
            engine.engine_batch = size
            np.testing.assert_allclose(engine.run(feed)[0], ref, atol=1e-5)
        np.testing.assert_allclose(engine.run({"image": feed["image"][:1]})[0], ref[:1], atol=1e-5)
    assert per_core.per_core_ready  # the 7-image batch ran one image per call on the one-thread session
    np.testing.assert_allclose(batch_only.run_one({"image": feed["image"][2:3]})[0], ref[2:3], atol=1e-5)
    per_core.close()
    np.testing.assert_allclose(
        per_core.run(feed)[0], ref, atol=1e-5
    )  # closed: still answers, one call at a time


def test_parity_gap_finds_a_graph_that_disagrees(graph: bytes) -> None:
    engine = OnnxRuntimeEngine(graph, threads=1)
    same = TorchEngine(_Net(), inputs=["image"])
    raw, probs = parity_gap(engine, same, _feed(4), softmax)
    assert raw < 1e-5 and probs < 1e-5
    other = _Net()
    with torch.no_grad():
        other.fc.bias.add_(0.5)
    raw, _ = parity_gap(engine, TorchEngine(other, inputs=["image"]), _feed(4))
    assert raw == pytest.approx(0.5, abs=1e-4)
    broken = _Net()
    with torch.no_grad():
        broken.fc.bias.fill_(float("nan"))
    assert parity_gap(engine, TorchEngine(broken, inputs=["image"]), _feed(4)) == (float("inf"), float("inf"))


def test_unknown_engine_or_precision_is_a_clear_error(graph: bytes) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        check_engine("tensorrt")
    with pytest.raises(ConfigError, match="openvino only"):
        check_engine("onnx", "bf16")
    with pytest.raises(ConfigError, match="does not run an exported graph"):
        create_graph_engine("torch", graph)


def test_calibrated_probabilities_refuse_a_bad_temperature() -> None:
    logits = np.array([[2.0, 0.0]])
    np.testing.assert_allclose(calibrated_probabilities(logits, 2.0), softmax(logits / 2.0))
    with pytest.raises(DataError, match="temperature must be positive"):
        calibrated_probabilities(logits, 0.0)
