"""A tiny trained model and its export, built once per session (timm test_efficientnet at 32 px, 3 classes)."""

from __future__ import annotations

import numpy as np
import pytest

CLASSES = ("Center", "Edge-Ring", "none")


def make_maps(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hand-made wafer maps: 0 off-wafer, 1 pass, 2 fail; class 0 a centre blob, 1 an edge ring, 2 sparse noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2) / size
    wafer = r <= 0.47
    labels = np.arange(n) % 3
    rng.shuffle(labels)
    maps = np.zeros((n, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):
        fail = rng.random((size, size)) < 0.04
        if c == 0:
            fail |= (r < rng.uniform(0.12, 0.2)) & (rng.random((size, size)) < 0.85)
        elif c == 1:
            fail |= (r > rng.uniform(0.36, 0.4)) & (rng.random((size, size)) < 0.85)
        m = np.where(wafer, np.where(fail, 2, 1), 0)
        maps[i] = m
    return maps, labels


def make_ds(n: int, seed: int, size: int = 32):
    from waferflow.data.contract import WaferDataset

    maps, labels = make_maps(n, size, seed)
    return WaferDataset(class_names=CLASSES, labels=labels, maps=maps, meta={"source": f"test-synth-{seed}"})


def train_tiny(ds, size: int = 32, seed: int = 0):
    """A quick, deterministic classifier: random conv features with data BN statistics + a trained linear head.

    (Full backprop training costs tens of seconds on the shared 2-core machine; this takes a few.)
    """
    import timm
    import torch

    from waferflow.models import ModelSpec, preprocess

    torch.manual_seed(seed)
    spec = ModelSpec(backbone="test_efficientnet", num_classes=3, class_names=CLASSES, input_size=size,
                     in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), weights_source="random")
    model = timm.create_model("test_efficientnet", num_classes=3, pretrained=False)
    x = torch.from_numpy(preprocess(ds.maps, spec))
    y = torch.from_numpy(ds.labels)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average: one pass gives the data's statistics
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    head = model.get_classifier()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, spec


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``{"model_dir", "export_dir", "train", "test", "info"}``: trained tiny model exported with INT8."""
    import torch

    from waferflow.export import export_onnx
    from waferflow.models import save_model_dir

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny")
    train, test = make_ds(200, seed=1), make_ds(120, seed=2)
    model, spec = train_tiny(train)
    history = [{"epoch": e, "phase": "head" if e < 2 else "all", "train_loss": 1.0 / e, "val_loss": 1.1 / e,
                "val_accuracy": 0.5 + 0.1 * e, "val_macro_f1": 0.4 + 0.1 * e, "lr": 1e-3, "seconds": 1.0}
               for e in range(1, 5)]
    model_dir = save_model_dir(model, spec, root / "model", history=history)
    # explicit INT8 settings: the default (auto) depends on the host's CPU, the tests must not
    info = export_onnx(model_dir, root / "export", calib_ds=train, parity_ds=test, calibration_maps=64,
                       int8_format="s8s8", reduce_range=True)
    return {"model_dir": model_dir, "export_dir": root / "export", "train": train, "test": test, "info": info,
            "root": root}
