"""Report stage: the comparison table of every candidate and the selected model's test results for the KFP UI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_report(
    candidates: Input[Artifact],
    test_metrics: Input[Artifact],
    latency: Input[Artifact],
    trt: Input[Artifact],
    verdicts: Input[Artifact],
    queue: Input[Artifact],
    markdown: Output[Markdown],
    html: Output[HTML],
    summary: Output[Artifact],
):
    """Write the Markdown/HTML report (candidates on validation, best on test, latency per form, TensorRT,
    every gate's value, interval, threshold and verdict with the one-line reason, and where the label queue is) and
    ``summary/summary.json``; the local launcher prints it."""
    import json
    import os

    from waferflow.config import atomic_write_json, atomic_write_text
    from waferflow.orchestration.runtime import RUN_DIR_ENV, render_report, stage

    def _load(art, name):
        with open(os.path.join(art.path, name)) as f:
            return json.load(f)

    with stage("report"):
        data = {
            "candidates": _load(candidates, "candidates.json"),
            "test": _load(test_metrics, "metrics.json"),
            "latency": _load(latency, "latency.json"),
            "trt": _load(trt, "trt.json"),
            "gates": _load(verdicts, "gates.json"),
            "version": verdicts.metadata.get("version"),
            "label_queue": dict(_load(queue, "queue.json"), folder=queue.path),
        }
        md, page = render_report(data)
        atomic_write_text(markdown.path, md)
        atomic_write_text(html.path, page)
        os.makedirs(summary.path, exist_ok=True)
        data["report_markdown"] = markdown.path
        data["report_html"] = html.path
        atomic_write_json(os.path.join(summary.path, "summary.json"), data)
        run_dir = os.environ.get(RUN_DIR_ENV)
        if run_dir:  # local runs only: the launcher reads it to print the summary
            atomic_write_json(os.path.join(run_dir, "summary.json"), data)
