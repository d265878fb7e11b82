"""Confusion/curves/Grad-CAM PNGs, the comparison table, and `waferflow evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from waferflow.data.contract import WaferDataset, save_dataset
from waferflow.errors import DataError
from waferflow.evaluation import metrics_from_logits
from waferflow.plots import comparison_table, gradcam, gradcam_overlays, plot_confusion, plot_history

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("Center", "Edge-Ring", "none")


@pytest.fixture(scope="module")
def small():
    import timm

    from waferflow.models import ModelSpec

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 4)
    maps = rng.integers(0, 3, size=(12, 24, 24), dtype=np.uint8)
    ds = WaferDataset(class_names=NAMES, labels=labels, maps=maps)
    spec = ModelSpec(backbone="test_efficientnet", num_classes=3, class_names=NAMES, input_size=32, in_chans=3)
    model = timm.create_model("test_efficientnet", num_classes=3, pretrained=False).eval()
    return ds, spec, model


def _is_png(p) -> bool:
    data = p.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def test_plot_confusion(tmp_path):
    y = np.array([0, 0, 1, 2, 2, 2])
    m = metrics_from_logits(y, np.eye(3)[[0, 1, 1, 2, 2, 0]], NAMES)
    assert _is_png(plot_confusion(m, tmp_path / "cm.png"))
    with pytest.raises(DataError):
        plot_confusion({"confusion_matrix": [[1]]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_history(tmp_path):
    hist = [{"epoch": e, "phase": "head" if e < 3 else "stage4", "train_loss": 1 / e, "val_loss": 1.2 / e,
             "val_accuracy": 0.6 + e / 20, "val_macro_f1": 0.5 + e / 20} for e in range(1, 6)]
    assert _is_png(plot_history(hist, tmp_path / "curves.png"))
    with pytest.raises(DataError):
        plot_history([], tmp_path / "empty.png")


def test_gradcam(small, tmp_path):
    ds, spec, model = small
    from waferflow.models import preprocess

    cams, pred = gradcam(model, preprocess(ds.maps[:3], spec))
    assert cams.shape == (3, 32, 32) and pred.shape == (3,)
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
    # the chosen layer is the last conv with a spatial map (test_efficientnet's last conv is 1x1 at 32 px)
    import torch

    from waferflow.plots import cam_layer

    layer = cam_layer(model, preprocess(ds.maps[:1], spec))
    seen = {}
    h = layer.register_forward_hook(lambda m, i, o: seen.update(hw=tuple(o.shape[-2:])))
    with torch.no_grad():
        model(torch.from_numpy(preprocess(ds.maps[:1], spec)))
    h.remove()
    assert min(seen["hw"]) >= 4
    # a layer whose map is 1x1 gives a flat CAM, reported as zeros rather than amplified noise
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    flat, _ = gradcam(model, preprocess(ds.maps[:2], spec), layer=last)
    assert np.all(flat == 0)
    assert _is_png(gradcam_overlays(model, spec, ds, tmp_path / "gc.png", per_class=2))


def test_comparison_table():
    rows = [
        {"candidate": "lite0-gu", "strategy": "gradual_unfreezing", "backbone": "tf_efficientnet_lite0",
         "overall": {"accuracy": 0.97123, "balanced_accuracy": 0.95, "macro_f1": 0.9, "ece": 0.02},
         "trainable_params": 3400000, "train_seconds": 123.45, "throughput_maps_per_s": 812.3},
        {"candidate": "scratch", "strategy": "scratch", "backbone": "resnet18", "accuracy": 0.5},
        {"candidate": "from-kfp", "trainable_params": 3396628.0},  # KFP metadata carries numbers as floats
    ]
    t = comparison_table(rows).strip().splitlines()
    assert len(t) == 5 and t[0].startswith("| candidate | strategy | backbone | accuracy |")
    assert "| lite0-gu | gradual_unfreezing | tf_efficientnet_lite0 | 0.9712 | 0.9500 | 0.9000 | 0.0200 |" in t[2]
    assert "3,400,000" in t[2] and "123.5" in t[2] and "812.3" in t[2]
    assert t[3].count(" - ") == 6  # missing values print as '-'
    assert "| 3,396,628 |" in t[4]


def test_cli_evaluate(small, tmp_path, capsys):
    from waferflow.cli import main
    from waferflow.models import save_model_dir

    ds, spec, model = small
    hist = [{"epoch": 1, "phase": "head", "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5,
             "val_macro_f1": 0.4}]
    mdir = save_model_dir(model, spec, tmp_path / "model", history=hist)
    save_dataset(ds, tmp_path / "test.npz")
    rc = main(["evaluate", "--model", str(mdir), "--data", str(tmp_path / "test.npz"), "--out",
               str(tmp_path / "eval"), "--gradcam-per-class", "1"])
    assert rc == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for k in ("accuracy", "macro_f1", "balanced_accuracy", "ece"):
        assert 0 <= m["overall"][k] <= 1
    assert set(m["per_class"]) == set(NAMES) and np.asarray(m["confusion_matrix"]).sum() == 12
    for png in ("confusion.png", "curves.png", "gradcam.png"):
        assert _is_png(tmp_path / "eval" / png)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["form"] == "torch"
    # wrong taxonomy: exit 2, a clear message, no metrics.json
    other = WaferDataset(class_names=("x", "y", "z"), labels=ds.labels, maps=ds.maps)
    save_dataset(other, tmp_path / "other.npz")
    rc = main(["evaluate", "--model", str(mdir), "--data", str(tmp_path / "other.npz"), "--out",
               str(tmp_path / "eval2")])
    assert rc == 2 and "differ from the model" in capsys.readouterr().err
    assert not (tmp_path / "eval2" / "metrics.json").exists()
    rc = main(["evaluate", "--model", str(mdir), "--data", str(tmp_path / "test.npz"), "--out",
               str(tmp_path / "eval3"), "--form", "onnx_int8"])
    assert rc == 2 and "--export" in capsys.readouterr().err
