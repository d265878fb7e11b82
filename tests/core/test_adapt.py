import numpy as np
import torch

from waferflow.models import create_model
from waferflow.train import adapt_bn



def test_adapt_bn_recomputes_stats_and_reports(make_disk):
    torch.manual_seed(0)
    model, spec = create_model("resnet18", 2, pretrained="none", input_size=16)
    maps = make_disk(24, 16)
    labels = np.arange(24) % 2
    before = model.bn1.running_mean.clone()
    rep = adapt_bn(model, spec, maps, batch_size=8, labels=labels)
    assert not model.training
    assert not torch.equal(before, model.bn1.running_mean)
    assert rep["n_maps"] == 24 and rep["n_layers"] == 20
    assert rep["mean_abs_shift_running_mean"] > 0 and "bn1" in rep["per_layer"]
    assert {"accuracy_before", "accuracy_after"} <= set(rep)
    assert model.bn1.momentum == 0.1  # restored
    # the new stats are the cumulative average over the target maps
    from waferflow.models import preprocess

    x = torch.from_numpy(preprocess(maps, spec))
    with torch.no_grad():
        pre = model.conv1(x)
    torch.testing.assert_close(model.bn1.running_mean, pre.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
