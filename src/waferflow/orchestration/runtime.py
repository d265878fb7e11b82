"""What every component does around its one library call: a stage banner, a timer,
progress bars that stay visible through kfp.local's line-buffered log relay, and
provenance for artifact metadata.

No kfp import here: components import this inside their function bodies.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from waferflow import __version__

#: Environment variable the local launcher sets to collect per-stage timings (JSON lines).
STAGE_LOG_ENV = "WAFERFLOW_STAGE_LOG"
#: Environment variable the local launcher sets so the report stage also writes ``summary.json`` there.
RUN_DIR_ENV = "WAFERFLOW_RUN_DIR"

DATASET_FILE = "data.npz"


class _CarriageReturnToNewline(io.TextIOBase):
    """kfp.local relays a task's output line by line, so tqdm's ``\\r`` redraws would only show at the end;
    turn them into newlines (tqdm's ``mininterval`` keeps the line count small)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, s: str) -> int:
        self._inner.write(s.replace("\r", "\n").replace("\n\n", "\n"))
        self._inner.flush()
        return len(s)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")


@contextlib.contextmanager
def stage(name: str, **info: Any) -> Iterator[dict]:
    """Banner + timer around one component's work.

    Yields a dict the caller may fill with facts to log (it starts with the interpreter that runs the stage, which
    tells a task in an image from one in this venv); on exit it gains ``seconds`` and, when
    ``$WAFERFLOW_STAGE_LOG`` is set (the local launcher sets it), one JSON line is appended there.
    """
    rec: dict[str, Any] = {"stage": name, **info, "python": sys.executable}
    detail = " ".join(f"{k}={v}" for k, v in info.items())
    print(f"\n==> [waferflow] stage {name} {detail}".rstrip(), flush=True)
    old_err = sys.stderr
    if not old_err.isatty():
        sys.stderr = _CarriageReturnToNewline(old_err)  # type: ignore[assignment]
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    t0 = time.perf_counter()
    ok = False
    try:
        yield rec
        ok = True
    finally:
        sys.stderr = old_err
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        rec["ok"] = ok
        print(f"<== [waferflow] stage {name} {'done' if ok else 'FAILED'} in {rec['seconds']:.1f}s", flush=True)
        log = os.environ.get(STAGE_LOG_ENV)
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, default=str) + "\n")


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result (for artifact metadata)."""
    out = {"waferflow": __version__, "python": platform.python_version()}
    for mod in ("torch", "timm", "onnxruntime", "mlflow", "numpy"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def rewritten_model_metadata(inherited: Any, stage_key: str, found: dict, model_dir: str | Path) -> dict:
    """Metadata of a model a stage rewrote after training (prior correction, source interpolation): the trained
    model's, plus ``stage_key``'s status, the versions and the new weights' sha256. When the stage scored validation
    before and after, ``val_*`` are the new model's and ``val_before_<stage_key>`` keeps the old ones."""
    from waferflow.models.spec import read_spec

    meta = {**dict(inherited), stage_key: found["status"]}
    if "validation" in found:
        after = found["validation"]["after"]
        meta.update({"val_accuracy": after["accuracy"], "val_macro_f1": after["macro_f1"],
                     f"val_before_{stage_key}": found["validation"]["before"]})
    return {**meta, "versions": versions(), "weights_sha256": read_spec(model_dir).weights_sha256}


def persist_metadata(*artifacts: Any) -> None:
    """Write each metrics-style artifact's metadata as JSON to its own path.

    ``Metrics`` and ``ClassificationMetrics`` live in metadata only; without a file at their path kfp.local's cache
    treats the task's cache entry as missing an artifact and runs the task again on every run.
    """
    from waferflow.config import atomic_write_json

    for a in artifacts:
        Path(a.path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(a.path, dict(a.metadata))


def dataset_file(artifact_path: str) -> Path:
    """The ``.npz`` inside a Dataset artifact folder."""
    return Path(artifact_path) / DATASET_FILE


def tracking_uri(explicit: str = "") -> str:
    """The MLflow tracking URI a component uses: the parameter, else ``$MLFLOW_TRACKING_URI``.

    Raises:
        RegistryError: Neither is set (on a cluster the Secret provides it; locally ``waferflow run`` sets it).
    """
    from waferflow.errors import RegistryError

    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise RegistryError(
            "no MLflow tracking URI: set MLFLOW_TRACKING_URI (the cluster Secret 'waferflow-credentials' "
            "provides it; `waferflow run` sets it to the workdir's embedded store) or pass tracking_uri"
        )
    return uri


def comparison_rows(candidates: dict) -> list[dict]:
    rows = []
    meta = candidates.get("model_metadata", {})
    for name, m in candidates.get("candidates", {}).items():
        md = meta.get(name, {})
        rows.append({"candidate": name, "strategy": md.get("strategy"), "backbone": md.get("backbone"),
                     "overall": m["overall"], "trainable_params": md.get("trainable_params"),
                     "train_seconds": md.get("train_seconds"), "throughput_maps_per_s": md.get("throughput_maps_per_s")})
    rows.sort(key=lambda r: -float(r["overall"]["macro_f1"]))
    return rows


def render_report(data: dict) -> tuple[str, str]:
    """Markdown and HTML of a pipeline run: candidates on validation, the selected model on test, latency per
    form, TensorRT status and every gate's value/threshold/verdict.

    Args:
        data: ``{"candidates": candidates.json, "test": metrics.json, "latency": latency.json,
            "trt": tensorrt.json, "gates": gates.json, "version": str}``.

    Returns:
        ``(markdown, html)``; ``data`` gains ``comparison_markdown``.
    """
    import html as _html

    from waferflow.gates import GateResult
    from waferflow.plots import comparison_table

    cands = data["candidates"]
    table = comparison_table(comparison_rows(cands))
    data["comparison_markdown"] = f"Candidates on validation (best: {cands.get('best')}):\n\n{table}"
    t = data["test"]["overall"]
    lines = [
        "# waferflow training run", "",
        f"Registered version: **{data.get('version')}**", "",
        f"## Candidates on validation (best: **{cands.get('best')}**)", "", table, "",
        f"## {cands.get('best')} on test", "",
        "| accuracy | balanced accuracy | macro-F1 | ECE | n |", "|---:|---:|---:|---:|---:|",
        f"| {t['accuracy']:.4f} | {t['balanced_accuracy']:.4f} | {t['macro_f1']:.4f} | {t['ece']:.4f} | {t['n']} |", "",
        "## Latency (single map)", "", "| form | p50 ms | p99 ms | maps/s (batch) |", "|---|---:|---:|---:|",
    ]
    for form, v in data["latency"].get("forms", {}).items():
        if "p99_ms" in v:
            lines.append(f"| {form} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v.get('throughput_maps_per_s', 0):.0f} |")
        else:
            lines.append(f"| {form} | {v.get('skipped', 'skipped')} | | |")
    lines += ["", f"TensorRT: {data['trt'].get('status')}", "", "## Gates", ""]
    g = data["gates"]
    lines.append(f"Verdict: **{'PASSED' if g.get('passed') else 'FAILED'}**"
                 + (f" (champion compared: v{g['champion_version']})" if g.get("champion_version") else " (no champion yet)"))
    if g.get("gated_form"):
        lines += ["", f"The gates read the deployed form, `{g['gated_form']}`, on the test maps (the table above is "
                      "the torch form)."]
    if g.get("reason"):
        lines += ["", f"Why: {g['reason']}"]
    level = f"{g.get('config', {}).get('confidence', 0.95):.0%}"
    lines += ["", f"| gate | value [{level} interval] | rule | verdict |", "|---|---:|---|---|"]
    for r in map(lambda d: GateResult(**d), g.get("results", [])):
        lines.append(f"| {r.name} | {r.value_text()} | {r.op} {r.threshold:g} | {'pass' if r.passed else '**FAIL**'} |")
    q = data.get("label_queue") or {}
    if q:
        lines += ["", "## Label queue", "", f"Skipped: {q['skipped']}" if q.get("skipped") else
                  f"{q.get('n')} unlabeled maps worth labeling: `{q.get('folder')}/queue.csv` (sheet `queue.png`); "
                  f"{q.get('how', '')}"]
    md = "\n".join(lines) + "\n"
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>waferflow run</title></head><body><pre>"
            + _html.escape(md) + "</pre></body></html>")
    return md, page
