"""The model card: Markdown a reviewer reads as the model version's description in the MLflow UI."""

from __future__ import annotations

from typing import Any, Mapping

from waferflow.gates import GateReport


def _f(v: Any, nd: int = 4) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ("n/a" if v is None else str(v))


def _data_section(manifest: Mapping[str, Any] | None) -> list[str]:
    if not manifest:
        return ["No data manifest was logged with this candidate: the data it saw is **unknown**."]
    # a split manifest holds one manifest per split; a dataset manifest is one
    splits = {k: v for k, v in manifest.items() if isinstance(v, Mapping) and "class_counts" in v}
    if not splits and "class_counts" in manifest:
        splits = {"test": manifest}
    lines = []
    if manifest.get("content_sha256"):
        lines.append(f"- Data hash (sha256): `{manifest['content_sha256']}`")
    if manifest.get("source"):
        lines.append(f"- Source: `{manifest['source']}`")
    for k in ("taxonomy", "seed", "generator"):
        if k in manifest:
            lines.append(f"- {k}: `{manifest[k]}`")
    for split, m in splits.items():
        counts = m.get("class_counts", {})
        lines.append(f"- **{split}**: {m.get('n_maps', sum(counts.values()))} maps"
                     + (f", sha256 `{m['content_sha256']}`" if m.get("content_sha256") else ""))
    if splits:
        names = sorted({c for m in splits.values() for c in m.get("class_counts", {})})
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        for c in names:
            lines.append(f"| {c} | " + " | ".join(str(m.get("class_counts", {}).get(c, 0)) for m in splits.values())
                         + " |")
    return lines


def build_model_card(
    *,
    name: str,
    spec: Mapping[str, Any],
    metrics: Mapping[str, Any],
    gate_report: GateReport,
    int8_metrics: Mapping[str, Any] | None = None,
    latency: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    pipeline_run_id: str | None = None,
    git_commit: str | None = None,
) -> str:
    """Render the model card (Markdown).

    Args:
        name: Registered model name.
        spec: ``model.json`` of the model dir.
        metrics: Test-set eval dict.
        gate_report: The gate results for this candidate.
        int8_metrics: Eval dict of the INT8 model on the same test set.
        latency: Latency JSON.
        manifest: Data manifest (dataset or split manifest).
        run_id: Candidate run id.
        pipeline_run_id: Parent pipeline run id.
        git_commit: Code version.
    """
    ov = metrics.get("overall", {})
    verdict = "PASSED every gate" if gate_report.passed else (
        "FAILED " + ", ".join(r.name for r in gate_report.violations))
    L = [
        f"# Model card: {name} ({spec.get('strategy', '?')} × {spec.get('backbone', '?')})",
        "",
        f"**Gate verdict: {verdict}.** "
        + ("Eligible for `champion`." if gate_report.passed else "Not promoted automatically; a person may "
           "override with `waferflow registry promote VERSION --reason ...`."),
        "",
        "## Model",
        f"- Backbone: `{spec.get('backbone')}`; strategy: `{spec.get('strategy')}`; "
        f"input {spec.get('input_size')}×{spec.get('input_size')}, {spec.get('in_chans')} channel(s)",
        f"- Pretrained weights: `{spec.get('weights_source', 'unknown')}`",
        f"- Classes ({spec.get('num_classes')}): {', '.join(map(str, spec.get('class_names', [])))}",
        f"- Code: git `{git_commit or 'unknown'}`, waferflow {spec.get('waferflow_version', '?')}",
        f"- Candidate run: `{run_id}`; pipeline run: `{pipeline_run_id}`",
        "",
        "## Data it saw",
        *_data_section(manifest),
        "",
        "## Test metrics",
        "| metric | FP32 | INT8 |",
        "|---|---|---|",
    ]
    i8 = (int8_metrics or {}).get("overall", {})
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "n"):
        L.append(f"| {k} | {_f(ov.get(k)) if k != 'n' else ov.get(k)} | "
                 f"{(_f(i8.get(k)) if k != 'n' else i8.get(k)) if i8 else 'not measured'} |")
    L += ["", "### Per class (FP32)", "| class | recall | precision | F1 | support |", "|---|---|---|---|---|"]
    floor = gate_report.config.min_class_recall
    for cname, d in metrics.get("per_class", {}).items():
        rec = d.get("recall")
        flag = " ⚠" if d.get("support", 0) > 0 and isinstance(rec, (int, float)) and rec < floor else ""
        L.append(f"| {cname} | {_f(rec, 3)}{flag} | {_f(d.get('precision'), 3)} | {_f(d.get('f1'), 3)} | "
                 f"{d.get('support')} |")
    L += ["", "## Latency (single map)", "| form | p50 ms | p95 ms | p99 ms | throughput maps/s |",
          "|---|---|---|---|---|"]
    for form, d in ((latency or {}).get("forms") or {}).items():
        if isinstance(d, Mapping) and "p99_ms" in d:
            L.append(f"| {form} | {_f(d.get('p50_ms'), 2)} | {_f(d.get('p95_ms'), 2)} | {_f(d.get('p99_ms'), 2)} | "
                     f"{_f(d.get('throughput_maps_per_s'), 1)} |")
        else:
            L.append(f"| {form} | {(d or {}).get('skipped', 'not measured') if isinstance(d, Mapping) else d} "
                     "| | | |")
    if not latency:
        L.append("| (none logged) | | | | |")
    extra = {k: v for k, v in (latency or {}).items() if k in ("threads", "input_size", "device", "cpu")}
    if extra:
        L.append("")
        L.append("Measured with " + ", ".join(f"{k}={v}" for k, v in extra.items()) + ".")
    champ = f" (relative gates against champion v{gate_report.champion_version}, same test set)" \
        if gate_report.champion_version else " (no champion yet: absolute gates only)"
    L += ["", f"## Gates{champ}", gate_report.markdown_table(), "",
          "## Intended use",
          "- Classifies the defect pattern of a wafer bin map (values 0 off-wafer, 1 pass, 2 fail), resized "
          "nearest-neighbour to the input size, for yield engineers triaging wafers of the product/fab whose "
          "data is listed above.",
          "- Deploy the form the latency gate measured (`" + gate_report.config.deployment_form + "`); feed it "
          "maps through `waferflow.models.preprocess`.",
          "",
          "## Limits",
          "- Accuracy holds only for maps like the data above; new products, tools or fabs need the drift monitor "
          "and possibly retraining.",
          "- Classes with low test support have wide uncertainty in their recall; ⚠ marks recalls below the floor "
          f"({floor}).",
          "- Probabilities are not calibrated beyond the ECE shown; do not use scores as defect rates.",
          "- Not a substitute for engineering review of an excursion."]
    return "\n".join(L) + "\n"
