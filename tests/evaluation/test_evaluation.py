"""The shared evaluator: metrics on hand-made cases, predictors, and its error cases."""

from __future__ import annotations

import numpy as np
import pytest

from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError, ModelFormatError
from waferflow.evaluation import evaluate, expected_calibration_error, metrics_from_logits
from waferflow.predictors import torch_predictor
from waferflow.models import ModelSpec

NAMES = ("a", "b", "c")


def spec(size: int = 16) -> ModelSpec:
    return ModelSpec(backbone="test_efficientnet", num_classes=3, class_names=NAMES, input_size=size, in_chans=1,
                     mean=(0.0,), std=(1.0,))


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2, 1, 0])
    m = metrics_from_logits(y, np.eye(3)[y] * 5.0, NAMES)
    assert m["overall"]["accuracy"] == 1.0 and m["overall"]["macro_f1"] == 1.0
    assert m["overall"]["balanced_accuracy"] == 1.0 and m["overall"]["n"] == 6
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["per_class"]["b"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}


def test_known_confusion():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    m = metrics_from_logits(y, np.eye(2)[pred], ("x", "y"))
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["overall"]["accuracy"] == 0.75
    assert m["overall"]["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["per_class"]["x"]["precision"] == 1.0 and m["per_class"]["x"]["recall"] == 0.5
    assert m["per_class"]["y"]["precision"] == pytest.approx(2 / 3)
    assert m["overall"]["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_ece_known_cases():
    y = np.zeros(10, dtype=int)
    # confidence 0.6 everywhere, all correct: ECE = |1.0 - 0.6| = 0.4
    probs = np.tile([0.6, 0.4], (10, 1))
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    # confidence 0.8 and 8 of 10 correct: perfectly calibrated
    y2 = np.array([0] * 8 + [1] * 2)
    probs2 = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(probs2, y2) == pytest.approx(0.0, abs=1e-12)
    m = metrics_from_logits(y2, probs2, ("p", "q"))  # probabilities are used as they are
    assert m["overall"]["ece"] == pytest.approx(0.0, abs=1e-12)


def _ds(n_per: int = 5, variable: bool = False) -> WaferDataset:
    """Class c maps are filled with value c (0/1/2), so an oracle can read the class from the input."""
    labels = np.repeat(np.arange(3), n_per)
    if not variable:
        maps = np.stack([np.full((20, 20), c, np.uint8) for c in labels])
        return WaferDataset(class_names=NAMES, labels=labels, maps=maps)
    maps = [np.full((10 + i, 12 + i), c, np.uint8) for i, c in enumerate(labels)]
    offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
    return WaferDataset(class_names=NAMES, labels=labels, maps_flat=np.concatenate([m.ravel() for m in maps]),
                        shapes=np.array([m.shape for m in maps], np.int32), offsets=offsets)


def oracle(x: np.ndarray) -> np.ndarray:
    assert x.dtype == np.float32 and x.shape[1:] == (1, 16, 16)  # preprocess ran: 1 channel, input size
    c = np.rint(x.mean(axis=(1, 2, 3)) * 2).astype(int)  # value/2 with mean 0, std 1
    return np.eye(3, dtype=np.float32)[c] * 4


@pytest.mark.parametrize("variable", [False, True])
def test_evaluate_runs_any_predictor(variable):
    m = evaluate(oracle, _ds(variable=variable), spec(), batch_size=4, form="oracle")
    assert m["overall"]["accuracy"] == 1.0 and m["overall"]["n"] == 15
    assert m["form"] == "oracle" and m["seconds"] >= 0
    assert m["class_names"] == list(NAMES)


def test_evaluate_errors():
    ds = _ds()
    with pytest.raises(ModelFormatError, match="expected"):
        evaluate(lambda x: np.zeros((len(x), 2), np.float32), ds, spec())
    with pytest.raises(DataError, match="labeled"):
        evaluate(oracle, WaferDataset(class_names=NAMES, maps=ds.maps), spec())
    with pytest.raises(DataError, match="differ from the model"):
        evaluate(oracle, WaferDataset(class_names=("x", "y", "z"), labels=ds.labels, maps=ds.maps), spec())
    with pytest.raises(ConfigError):
        evaluate(oracle, ds, spec(), batch_size=0)


def test_torch_predictor_matches_model_and_refuses_missing_cuda():
    import timm
    import torch

    model = timm.create_model("test_efficientnet", num_classes=3, in_chans=1, pretrained=False).eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_predictor(model)(x), ref, rtol=1e-5, atol=1e-6)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            torch_predictor(model, device="cuda")
