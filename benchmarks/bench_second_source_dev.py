"""Would a second synthetic source model pay as a third member of the deployed ensemble? Post hoc, on finished
development runs whose deployed model is the source ensemble (fewer labels than ``source_ensemble_below``).

Such a run deploys the mean probability of its model (after the prior correction) and the registered source model
(ImageNet -> synthetic maps, never a real label). This benchmark trains one more source model by the ``real``
profile's source recipe with another seed (``--source-seed``: other synthetic maps, another training order), or
reads one (``--source-dir``), and scores on each run's dev maps, with the deployed TTA (the 8 symmetry views of each
map turned by each of ``--tta-rotations``, in torch):

- ``deployed``: the run's deployed ensemble, the reference (``P_deployed``; kept in ``dev_probs.npz`` as
  ``bench_paired_dev`` keeps it);
- ``second_source``: the new source model as a third member, equal weights: ``(2 P_deployed + P_new) / 3``;
- ``source_twice``, a control: the registered source model counted twice, ``(2 P_deployed + P_source) / 3``, which
  separates "more weight on a source model" from "a second, different one";
- each source model alone;
- the registered source's weight, for context: ``model_alone`` (weight 0: the model after the prior correction,
  whose probability is ``2 P_deployed - P_source``) and ``source_third`` (weight 1/3), beside the deployed 1/2 and
  ``source_twice``'s 2/3.

Mean probabilities are linear in the members' probabilities, so these are exactly what a three-member
``MeanProbabilityEnsemble`` under the same TTA would score. Each option is compared with ``deployed`` by
``bench_paired_dev``'s paired test on the same maps::

    python -m benchmarks.bench_second_source_dev --workdir /tmp/s11 --workdir /tmp/s12 \\
        --source-out /tmp/source_seed1 --out second_source.json

Prints JSON. Nothing here reads ``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


#: the options compared with the deployed model by the paired test (the first is the lever; the others context)
COMPARED = ("second_source", "source_twice", "source_third", "model_alone")


def train_second_source(seed: int, out_dir: Path, workdir: Path, sets: list[str]) -> Path:
    """A source model by the run's ``real`` profile recipe (``--set`` overrides ``sets``) with ``seed``, trained into
    ``out_dir`` (reused when it holds one already)."""
    from waferflow.config import load_config
    from waferflow.models.spec import read_spec
    from waferflow.profiles import get_profile
    from waferflow.train.source import SourceConfig, matching_taxonomy, pretrain_source

    from benchmarks.bench_ensemble_dev import deployed_model, run_outputs

    if (out_dir / "model.json").is_file():
        return out_dir
    prof = get_profile("real", sets)
    spec = read_spec(deployed_model(run_outputs(workdir / "run")))
    cfg = load_config(SourceConfig, overrides={**dict(prof.source), "seed": seed})
    taxonomy = matching_taxonomy(spec.class_names)
    if taxonomy is None:
        raise SystemExit(f"no synthetic taxonomy has the run's classes {list(spec.class_names)}: no source model")
    pretrain_source(cfg, taxonomy, spec.backbone, int(spec.input_size), out_dir, pretrained=prof.pretrained)
    return out_dir


def scored_options(y: np.ndarray, deployed: np.ndarray, source: np.ndarray, new: np.ndarray,
                   class_names: list[str]) -> dict:
    """The options above from the three probability arrays, each with its paired change against ``deployed``."""
    from benchmarks.bench_ensemble_dev import _scores
    from benchmarks.bench_paired_dev import paired_change

    model = 2 * deployed - source  # the deployed ensemble is the mean of the model and the source
    options = {"deployed": deployed, "second_source": (2 * deployed + new) / 3,
               "source_twice": (2 * deployed + source) / 3, "registered_source_alone": source,
               "new_source_alone": new, "model_alone": model, "source_third": (2 * model + source) / 3}
    out = {name: _scores(y, p) for name, p in options.items()}
    for name in COMPARED:
        out[name]["paired_change"] = paired_change(y, deployed.argmax(1), options[name].argmax(1), class_names)
    return out


def score_run(workdir: Path, new_source: Path, angles: list[float]) -> dict:
    """One finished run: its deployed ensemble, its registered source member and the new source model on its dev maps."""
    from waferflow.data.contract import load_dataset
    from waferflow.models.ensemble import is_ensemble
    from waferflow.models.spec import read_spec

    from benchmarks.bench_ensemble_dev import deployed_probs, run_outputs
    from benchmarks.bench_rot_tta_dev import angle_probs

    run_outputs(workdir / "run")  # a folder without a finished run is refused before anything is read
    ds = load_dataset(workdir / "dev.npz", require_labels=True)
    model, deployed = deployed_probs(workdir, ds, angles)
    spec = read_spec(model)
    record = spec.extra.get("source_ensemble") or {}
    if not is_ensemble(spec) or record.get("status") != "ensembled":
        raise SystemExit(f"{workdir}: the deployed model is not the source ensemble (it had "
                         f"{record.get('n_labeled', 'its')} labeled training maps); give a run with fewer labels than "
                         "source_ensemble_below")

    def tta(model_dir: Path, member: int | None = None) -> np.ndarray:
        return np.mean(list(angle_probs(model_dir, ds, angles, member=member).values()), axis=0)

    res = scored_options(ds.labels, deployed, tta(model, member=1), tta(new_source), list(ds.class_names))
    return {"workdir": str(workdir), "registered_source": record.get("source"), **res}


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, action="append", required=True,
                    help="a finished `bench_real_pipeline --dev` run deployed as the source ensemble (once or more)")
    ap.add_argument("--source-seed", type=int, default=1, help="the new source model's seed (default 1)")
    ap.add_argument("--source-out", type=Path, default=None,
                    help="train the new source model here (reused when it holds one); default WORKDIR/source_seedN")
    ap.add_argument("--source-dir", type=Path, default=None, help="a source model dir to use instead of training one")
    ap.add_argument("--set", action="append", default=[], help="the runs' real-profile overrides (as given to them)")
    ap.add_argument("--tta-rotations", type=float, nargs="*", default=[45.0],
                    help="the deployed TTA's extra angles (the real profile's export.tta_rotations)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    first = a.workdir[0]
    new = a.source_dir or train_second_source(a.source_seed, a.source_out or first / f"source_seed{a.source_seed}",
                                              first, a.set)
    runs = [score_run(w, new, [0.0, *a.tta_rotations]) for w in a.workdir]
    res = {"new_source": str(new), "source_seed": None if a.source_dir else a.source_seed, "runs": runs,
           "mean_change": {name: {k: round(float(np.mean([r[name][k] - r["deployed"][k] for r in runs])), 4)
                                  for k in ("accuracy", "macro_f1")} for name in COMPARED}}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
