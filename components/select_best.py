"""Fan-in stage: choose the best candidate on validation from every trained candidate (dsl.Collected)."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_best(
    models: Input[List[Model]],
    val_metrics: Input[List[Artifact]],
    best: Output[Model],
    candidates: Output[Artifact],
    table: Output[Markdown],
) -> NamedTuple("Best", [("name", str), ("val_accuracy", float)]):
    """Pick the candidate with the best validation macro-F1 (ties: accuracy), copy its model folder to ``best``,
    and write every candidate's validation metrics (``candidates/candidates.json``) and a Markdown table.

    Args:
        models: Every candidate's model folder.
        val_metrics: Every candidate's validation ``metrics.json`` artifact (any order; matched by candidate name).
    """
    import json
    import os
    import shutil
    from collections import namedtuple

    from waferflow.config import atomic_write_json, atomic_write_text
    from waferflow.errors import WaferflowError
    from waferflow.orchestration.runtime import comparison_rows, stage, versions
    from waferflow.plots import comparison_table
    from waferflow.selection import choose_best

    with stage("select_best", n=len(models)) as rec:
        rows = {}
        for art in val_metrics:
            with open(os.path.join(art.path, "metrics.json")) as f:
                m = json.load(f)
            rows[m["candidate"]] = m
        by_name = {m.metadata["candidate"]: m for m in models}
        missing = sorted(set(by_name) - set(rows))
        if missing:
            raise WaferflowError(f"no validation metrics for candidate(s) {missing}; the evaluate tasks did not finish")
        name, ranked = choose_best(rows)
        chosen = by_name[name]
        shutil.copytree(chosen.path, best.path, dirs_exist_ok=True)
        best.metadata.update(dict(chosen.metadata))
        best.metadata.update({"selected_on": "val", "n_candidates": len(models), "versions": versions()})
        os.makedirs(candidates.path, exist_ok=True)
        record = {"best": name, "ranked": ranked, "candidates": rows,
                  "model_metadata": {k: dict(v.metadata) for k, v in by_name.items()}}
        atomic_write_json(os.path.join(candidates.path, "candidates.json"), record)
        md = comparison_table(comparison_rows(record))
        atomic_write_text(table.path, f"## Candidates on validation\n\nbest: **{name}**\n\n{md}\n")
        rec.update(best=name)
        acc = float(rows[name]["overall"]["accuracy"])
    return namedtuple("Best", ["name", "val_accuracy"])(name, acc)
