"""``waferflow demo drift``: the drift loop end to end on this machine.

1. The champion of the local store (``<workdir>/mlflow.db``), or a quick one trained through kfp.local.
2. Its drift reference (built from its training distribution and stored with its version when missing).
3. A clean batch: no drift.
4. A shifted batch (one defect class 5% -> 25%, background fail rate x2, a different die grid): drift found,
   the retrain starts through kfp.local and registers a new version.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

from waferflow.errors import WaferflowError

#: The quick champion: the ``tiny`` profile made a little bigger, with gates a one-epoch model can pass.
#: (Real runs use the design card's gates; the demo is about the drift loop, not model quality.)
DEMO_OVERRIDES = [
    "n_maps=1500", "map_size=64", "input_size=64", "taxonomy=wm811k",
    "strategies=[feature_extraction]", "epochs={feature_extraction: 4}",
    "gates={min_accuracy: 0.3, min_macro_f1: 0.1, min_class_recall: 0.0, max_p99_latency_ms: 1000.0, "
    "max_int8_accuracy_drop: 1.0, champion_accuracy_tolerance: 1.0, champion_macro_f1_tolerance: 1.0}",
]
DEMO_PROFILE = "tiny"


def run_demo(workdir: str | os.PathLike = "waferflow_demo_drift", n: int = 1000, seed: int = 0,
             retrain: bool = True, launcher_factory: Callable | None = None, out=None) -> dict:
    """Run the demo; print each step; return ``{"clean": decision, "shifted": decision, ...}``."""
    from waferflow.data.contract import save_dataset
    from waferflow.data.synth import generate
    from waferflow.drift.check import run_drift_check
    from waferflow.drift.store import resolve_champion
    from waferflow.models import read_spec
    from waferflow.profiles import get_profile
    from waferflow.tracking import get_champion, resolve_tracking_uri

    out = out or sys.stdout
    wd = Path(workdir).expanduser().resolve()
    wd.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(None, wd)
    os.environ.setdefault("MLFLOW_TRACKING_URI", uri)
    prof = get_profile(DEMO_PROFILE, DEMO_OVERRIDES)
    name = prof.registered_model_name
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[demo {time.perf_counter() - t0:6.1f}s] {msg}", file=out, flush=True)

    say(f"workdir {wd}; MLflow store {uri}")
    info = _champion(say, uri, wd, name, launcher_factory, out)
    ch = resolve_champion(uri, wd / "champion", name=name)
    taxonomy = read_spec(ch.model_dir).taxonomy or prof.taxonomy
    size = prof.map_size
    ref_dir = _reference(say, uri, wd, ch, prof, taxonomy)

    batches = wd / "batches"
    batches.mkdir(exist_ok=True)
    say(f"step 3/4: a clean batch ({n} maps from the champion's own distribution)")
    clean = generate(n, size=size, seed=seed + 101, taxonomy=taxonomy)
    save_dataset(clean, batches / "clean.npz")
    d_clean = run_drift_check(batches / "clean.npz", wd / "drift_clean", model=str(ch.model_dir), reference=ref_dir,
                          tracking_uri=uri, workdir=wd)
    _show(say, d_clean)

    shift, what = _shift_config(taxonomy)
    say(f"step 4/4: a shifted batch: {what}")
    shifted = generate(n, size=size, seed=seed + 202, taxonomy=taxonomy, config=shift)
    save_dataset(shifted, batches / "shifted.npz")
    launcher = None
    if retrain:
        launcher = launcher_factory(DEMO_PROFILE, DEMO_OVERRIDES, wd, out=out)
        say("drift check with --retrain: on drift the training pipeline starts through kfp.local "
            "(the labeled shifted maps are its data)")
    d_shift = run_drift_check(batches / "shifted.npz", wd / "drift_shifted", model=str(ch.model_dir),
                          reference=ref_dir, tracking_uri=uri, workdir=wd, retrain=retrain, launcher=launcher)
    _show(say, d_shift)
    after = get_champion(uri, wd / "champion_after", name=name)
    if retrain and d_shift.get("retrain", {}).get("started"):
        from waferflow.tracking import list_versions

        vs = list_versions(uri, name=name)
        say(f"retrain finished: {len(vs)} registered version(s) of {name}; champion now "
            f"v{after.version if after else None} (was v{info.version})")
    say(f"reports: {d_clean['report_html']} and {d_shift['report_html']}")
    return {"clean": d_clean, "shifted": d_shift, "champion_before": info.version,
            "champion_after": after.version if after else None}


def _champion(say, uri: str, wd: Path, name: str, launcher_factory: Callable | None, out):
    """Step 1: the champion of the local store, trained quickly through kfp.local when there is none."""
    from waferflow.tracking import get_champion

    say("step 1/4: the champion")
    info = get_champion(uri, wd / "champion", name=name)
    if info is None:
        if launcher_factory is None:
            raise WaferflowError("no champion in the local store and no launcher to train one")
        say(f"no champion of {name!r} yet: training a quick one through kfp.local (profile {DEMO_PROFILE} with "
            f"{' '.join(DEMO_OVERRIDES[:4])}; demo gates relaxed for a 4-epoch model)")
        from waferflow.drift.retrain import RetrainPlan

        launcher_factory(DEMO_PROFILE, DEMO_OVERRIDES, wd, out=out)(RetrainPlan())
        info = get_champion(uri, wd / "champion", name=name)
        if info is None:
            raise WaferflowError("the quick training run promoted no champion (its gates failed); see the log above")
    say(f"champion: {name} v{info.version} (run {info.run_id}), model dir {info.model_dir}")
    return info


def _reference(say, uri: str, wd: Path, ch, prof, taxonomy: str):
    """Step 2: the champion's drift reference, built from its training distribution and stored when missing."""
    from waferflow.data.synth import generate
    from waferflow.drift.reference import build_reference
    from waferflow.drift.store import store_reference

    step_ref = "step 2/4: the champion's drift reference"
    if ch.reference_dir is not None:
        say(f"{step_ref}: stored with v{ch.version} -> {ch.reference_dir}")
        return ch.reference_dir
    say(f"{step_ref}: none stored with v{ch.version}; building it from its training distribution "
        f"({prof.n_maps} synthetic {taxonomy} maps, seed {prof.seed}) and storing it with the version")
    size = prof.map_size
    train = generate(prof.n_maps, size=size, seed=prof.seed, taxonomy=taxonomy)
    held = generate(max(prof.n_maps // 3, 300), size=size, seed=prof.seed, taxonomy=taxonomy, start=prof.n_maps)
    ref_dir = build_reference(ch.model_dir, train, wd / "reference" / f"v{ch.version}", holdout=[held])
    store_reference(uri, ch.run_id, ref_dir)
    return ref_dir


def _shift_config(taxonomy: str):
    """Step 4's synthetic shift (one defect class near 5% -> 25%, background fail rate x2, a different die grid):
    ``(SynthConfig, what changed in words)``."""
    import numpy as np

    from waferflow.data.synth import TAXONOMIES, default_config

    tax = TAXONOMIES[taxonomy]
    freqs = np.asarray(tax.default_freqs, float)
    k = int(np.argmin(np.abs(freqs - 0.05)))  # a defect class near 5%
    freqs = freqs * (0.75 / (1 - freqs[k]))
    freqs[k] = 0.25
    d0 = default_config(taxonomy)
    shift = default_config(taxonomy, class_freqs=tuple(freqs),
                           background_fail_rate=(2 * d0.background_fail_rate[0], 2 * d0.background_fail_rate[1]),
                           grid_range=(d0.grid_range[1] + 10, d0.grid_range[1] + 60))
    what = (f"{tax.class_names[k]} {tax.default_freqs[k]:.0%} -> 25%, background fail rate "
            f"{d0.background_fail_rate} -> {shift.background_fail_rate}, die grid {d0.grid_range} -> {shift.grid_range}")
    return shift, what


def _show(say, d: dict) -> None:
    verdict = "DRIFT DETECTED" if d["drift_detected"] else "no drift"
    say(f"  -> {verdict}: share of drifted features {d['share']:.2f}, embedding AUC {d['embedding_score']:.3f}, "
        f"prediction-mix JS {d['prediction_js']:.3f}")
    for r in d["reasons"]:
        say(f"     reason: {r}")
    say(f"     report {d['report_html']}")
