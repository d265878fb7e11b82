import numpy as np
import pytest
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


def test_adapt_bn_leaves_the_callers_random_stream_alone(make_disk):
    torch.manual_seed(0)
    model, spec = create_model("resnet18", 2, pretrained="none", input_size=16, drop_rate=0.5)
    state = torch.get_rng_state()
    adapt_bn(model, spec, make_disk(8, 16), batch_size=4)
    assert torch.equal(state, torch.get_rng_state())


def test_sample_maps_takes_all_in_order_or_a_bounded_seeded_sample(make_lines):
    from waferflow.errors import ConfigError
    from waferflow.train.adapt import sample_maps

    a, b = make_lines(30, size=16, seed=0), make_lines(20, size=24, seed=1)
    whole = sample_maps([a, b], 16, max_maps=50)
    np.testing.assert_array_equal(whole, np.concatenate([a.resized(16), b.resized(16)]))
    s1, s2 = sample_maps([a, b], 16, max_maps=12, seed=3), sample_maps([a, b], 16, max_maps=12, seed=3)
    assert s1.shape == (12, 16, 16) and s1.dtype == np.uint8
    np.testing.assert_array_equal(s1, s2)  # seeded
    rows = {m.tobytes() for m in whole}
    assert all(m.tobytes() in rows for m in s1)  # drawn from the pool, without stacking all of it
    assert not np.array_equal(s1, sample_maps([a, b], 16, max_maps=12, seed=4))
    with pytest.raises(ConfigError, match="max_maps"):
        sample_maps([a], 16, max_maps=1)
