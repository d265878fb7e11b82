"""keep_freed_memory: glibc keeps freed buffers in the process (fewer page faults), and only where it should."""

import subprocess
import sys

import pytest

from waferflow.config import load_config
from waferflow.train import TrainConfig, train
from waferflow.train import loop, malloc

# allocate and free buffers of 1-16 MiB, as a training step does, and count the minor page faults it costs
CHURN = """
import resource, sys
import numpy as np
if sys.argv[1] == "on":
    from waferflow.train.malloc import keep_freed_memory
    print(keep_freed_memory())
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    bufs = [np.ones((s << 20) // 8) for s in (1, 2, 4, 8, 16, 3, 6)]
    del bufs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _faults(mode: str) -> tuple[list[str], int]:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings of the caller's
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, env=env)
    lines = out.stdout.split("\n")[:-1]
    return lines[:-1], int(lines[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_buffers_stay_in_the_process():
    _, off = _faults("off")
    said, on = _faults("on")
    assert said == ["mmap threshold 32 MiB, trim threshold 256 MiB"]
    assert on * 10 < off, (on, off)  # measured: about 3,600 against 117,000


def test_user_settings_and_other_platforms_are_left_alone(monkeypatch):
    malloc.keep_freed_memory.cache_clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert malloc.keep_freed_memory() == "left to the environment (MALLOC_TRIM_THRESHOLD_)"
    malloc.keep_freed_memory.cache_clear()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.keep_freed_memory() == "unchanged: no glibc on darwin"
    assert malloc.keep_freed_memory() == "unchanged: no glibc on darwin"  # decided once per process
    malloc.keep_freed_memory.cache_clear()  # the next caller in this process decides afresh


@pytest.mark.parametrize("setting", [True, False])
def test_training_applies_it_when_its_config_says_so(tmp_path, make_lines, monkeypatch, setting):
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1))
    cfg = load_config(TrainConfig, overrides=["input_size=16", "batch_size=16", "num_threads=1", "epochs=1",
                                              "strategy=scratch", "pretrained=none", "backbone=resnet18",
                                              f"keep_freed_memory={setting}"])
    train(cfg, make_lines(32, seed=0), make_lines(8, seed=1), tmp_path / "m")
    assert calls == ([1] if setting else [])
