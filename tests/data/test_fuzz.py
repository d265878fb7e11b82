"""Fuzz the ingest readers with structured corruptions of valid npz, pickle and PNG inputs (bounded in the suite;
``python -m benchmarks.bench_fuzz`` runs the same corruptions for longer, in child processes)."""

import tempfile
from pathlib import Path

import pytest
from crafted import corrupt, run_reader, seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

OPS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "dup", "zero", "insert"]), st.integers(0, 2**20),
                         st.integers(0, 255)), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def seed_inputs(tmp_path_factory):
    # not `from conftest import ...`: in the whole suite that name is another folder's conftest
    return seeds(tmp_path_factory.mktemp("seeds"), Path(__file__).resolve().parents[1] / "fixtures" / "LSWMD_small.pkl")


@pytest.mark.parametrize("name", ["npz", "npz_compressed", "pickle_p5", "pickle_legacy", "pickle_xz", "png"])
def test_uncorrupted_seeds_are_read(seed_inputs, name, tmp_path):
    suffix, data = seed_inputs[name]
    assert run_reader(data, suffix, tmp_path) == "ok"


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["npz", "npz_compressed", "pickle_p5", "pickle_legacy", "pickle_xz", "png"]), ops=OPS)
def test_corrupted_inputs_are_read_or_refused_never_crash(seed_inputs, name, ops):
    suffix, data = seed_inputs[name]
    with tempfile.TemporaryDirectory() as d:
        assert run_reader(corrupt(data, ops), suffix, Path(d)) in ("ok", "refused")
