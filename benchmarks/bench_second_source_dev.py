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

Mean probabilities are linear in the members' probabilities, so ``second_source`` and ``source_twice`` are what a
three-member ``MeanProbabilityEnsemble`` under the same TTA would score (the new model must match the deployed one's
backbone, classes, input and normalization, so both take the same views). The options in :data:`COMPARED` are
compared with ``deployed`` by ``bench_paired_dev``'s paired test on the same maps. Every workdir is checked before
the new source model is trained::

    python -m benchmarks.bench_second_source_dev --workdir /tmp/s11 --workdir /tmp/s12 \\
        --source-out /tmp/source_seed1 --out second_source.json

Prints JSON. Nothing here reads ``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: the options compared with the deployed model by the paired test (the first is the lever; the others context)
COMPARED = ("second_source", "source_twice", "source_third", "model_alone")
#: beside a trained source model: the seed and recipe it was trained with, so a reused one is the one asked for
MARKER = "second_source.json"


def deployed_ensemble_spec(workdir: Path):
    """The spec of a finished run's deployed model, which must be the source ensemble.

    Raises:
        SystemExit: no finished run there, or its deployed model is not the source ensemble.
    """
    from waferflow.models.ensemble import is_ensemble
    from waferflow.models.spec import read_spec

    from benchmarks.bench_ensemble_dev import deployed_model, run_outputs

    spec = read_spec(deployed_model(run_outputs(workdir / "run")))
    status = (spec.extra.get("source_ensemble") or {}).get("status", "no source_ensemble record in its model.json")
    if not is_ensemble(spec) or status != "ensembled":
        raise SystemExit(f"{workdir}: the deployed model is not the source ensemble ({status}); give a run with fewer "
                         "labeled training maps than source_ensemble_below")
    return spec


def check_same_input(new_dir: Path, spec) -> None:
    """Refuse a new source model whose backbone, classes, input or normalization differ from the deployed model's
    (its probability columns or views would not line up)."""
    from waferflow.models.ensemble import member_mismatch
    from waferflow.models.spec import read_spec

    differ = member_mismatch(read_spec(new_dir), spec)
    if differ:
        raise SystemExit(f"{new_dir} differs from the deployed model in {differ}; it cannot be a member")


def train_second_source(seed: int, out_dir: Path, spec, sets: list[str]) -> Path:
    """A source model by the ``real`` profile's recipe (``--set`` overrides ``sets``) with ``seed``, for the deployed
    model's backbone, classes and input, trained into ``out_dir`` (reused when it was trained with the same seed and
    recipe)."""
    from waferflow.config import load_config, to_dict
    from waferflow.profiles import get_profile
    from waferflow.train.source import SourceConfig, matching_taxonomy, pretrain_source

    prof = get_profile("real", sets)
    registered = load_config(SourceConfig, overrides=dict(prof.source))
    if seed == registered.seed:
        raise SystemExit(f"--source-seed {seed} is the registered source model's own seed; give another")
    cfg = load_config(SourceConfig, overrides={**dict(prof.source), "seed": seed})
    want = {"seed": seed, "recipe": to_dict(cfg), "backbone": spec.backbone, "input_size": int(spec.input_size)}
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"{out_dir} holds something else than a source model of {want}; give an empty --source-out")
    taxonomy = matching_taxonomy(spec.class_names)
    if taxonomy is None:
        raise SystemExit(f"no synthetic taxonomy has the run's classes {list(spec.class_names)}: no source model")
    pretrain_source(cfg, taxonomy, spec.backbone, int(spec.input_size), out_dir, pretrained=prof.pretrained,
                    device=prof.device)
    marker.write_text(json.dumps(want))
    return out_dir


def options(deployed: np.ndarray, source: np.ndarray, new: np.ndarray) -> dict[str, np.ndarray]:
    """Every option's probabilities from the deployed ensemble's, its source member's and the new model's."""
    model = 2 * deployed - source  # the deployed ensemble is the mean of the model and the source
    return {"deployed": deployed, "second_source": (2 * deployed + new) / 3,
            "source_twice": (2 * deployed + source) / 3, "registered_source_alone": source,
            "new_source_alone": new, "model_alone": model, "source_third": (2 * model + source) / 3}


def scored_options(y: np.ndarray, probs: dict[str, np.ndarray], class_names: list[str]) -> dict:
    """Accuracy and macro-F1 of every option, and the paired change against ``deployed`` of those in COMPARED."""
    from benchmarks.bench_ensemble_dev import _scores
    from benchmarks.bench_paired_dev import paired_change

    out = {name: _scores(y, p) for name, p in probs.items()}
    for name in COMPARED:
        out[name]["paired_change"] = paired_change(y, probs["deployed"].argmax(1), probs[name].argmax(1),
                                                   class_names)
    return out


def score_run(workdir: Path, spec, new_dir: Path, angles: list[float]) -> dict:
    """One finished run (``spec``: its deployed ensemble's, from :func:`deployed_ensemble_spec`): the deployed
    ensemble, its registered source member and the new model on its dev maps."""
    from waferflow.data.contract import load_dataset

    from benchmarks.bench_ensemble_dev import deployed_probs
    from benchmarks.bench_rot_tta_dev import angle_probs

    ds = load_dataset(workdir / "dev.npz", require_labels=True)
    model, deployed = deployed_probs(workdir, ds, angles)

    def tta(model_dir: Path, member: int | None = None) -> np.ndarray:
        return np.mean(list(angle_probs(model_dir, ds, angles, member=member).values()), axis=0)

    # member 1 of the source ensemble is the registered source model (waferflow.train.source_ensemble)
    probs = options(deployed, tta(model, member=1), tta(new_dir))
    return {"workdir": str(workdir), "registered_source": spec.extra["source_ensemble"].get("source"),
            **scored_options(ds.labels, probs, list(ds.class_names))}


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
    specs = [deployed_ensemble_spec(w) for w in a.workdir]  # every run checked before anything is trained
    new_dir = a.source_dir or train_second_source(
        a.source_seed, a.source_out or a.workdir[0] / f"source_seed{a.source_seed}", specs[0], a.set)
    for spec in specs:
        check_same_input(new_dir, spec)
    runs = [score_run(w, spec, new_dir, [0.0, *a.tta_rotations]) for w, spec in zip(a.workdir, specs)]
    res = {"new_source": str(new_dir), "source_seed": None if a.source_dir else a.source_seed, "runs": runs,
           "mean_change": {name: {k: round(float(np.mean([r[name][k] - r["deployed"][k] for r in runs])), 4)
                                  for k in ("accuracy", "macro_f1")} for name in COMPARED}}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
