"""Every pipeline compiles, and the YAML puts GPU scheduling and secrets on the right tasks."""

import yaml

from waferflow import __version__
from waferflow.cli import main

# training-shaped tasks go to the GPU pool when the profile trains on CUDA (the full profile does)
GPU_EXECUTORS = {"exec-train-candidate", "exec-compile-tensorrt", "exec-source-model", "exec-self-train-model"}
TRACKING_EXECUTORS = {"exec-start-run", "exec-log-to-mlflow", "exec-register-model", "exec-promote-model",
                      "exec-finish-run"}


def _load(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec, platform


def test_compile_writes_every_pipeline_with_gpu_pool_and_secrets(tmp_path, capsys):
    rc = main(["compile", "--out", str(tmp_path), "--profile", "full", "--registry", "reg.example.com/wf",
               "--set", "cluster.gpu_node_selector={pool: a100}", "--set", "cluster.gpu_limit=2",
               "--set", "cluster.secret_name=wf-creds"])
    assert rc == 0
    files = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert files == ["waferflow-drift-monitor.yaml", "waferflow-training.yaml"]

    spec, platform = _load(tmp_path / "waferflow-training.yaml")
    executors = spec["deploymentSpec"]["executors"]
    for name, ex in executors.items():
        image = ex["container"]["image"]
        accel = (ex["container"].get("resources") or {}).get("accelerator")
        node_sel = platform.get(name, {}).get("nodeSelector")
        tol = platform.get(name, {}).get("tolerations")
        if name in GPU_EXECUTORS:
            assert image == f"reg.example.com/wf/waferflow-gpu:{__version__}", name
            assert accel["resourceType"] == "nvidia.com/gpu" and accel["resourceCount"] == "2", name
            assert node_sel == {"labels": {"pool": "a100"}}, name
            assert tol == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}], name
        else:
            assert image == f"reg.example.com/wf/waferflow-cpu:{__version__}", name
            assert accel is None and node_sel is None and tol is None, name
    for name in TRACKING_EXECUTORS | {"exec-train-candidate", "exec-source-model"}:
        (sec,) = platform[name]["secretAsEnv"]
        assert sec["secretName"] == "wf-creds"
        envs = {k["envVar"] for k in sec["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
    # the data task reads S3/MLflow sources with the Secret; tasks that only read artifacts get no credentials
    assert platform["exec-prepare-data"]["secretAsEnv"][0]["secretName"] == "wf-creds"
    for name in ("exec-split-data", "exec-select-best", "exec-export-model"):
        assert "secretAsEnv" not in platform.get(name, {}), name
    # every task requests CPU and memory (a namespace ResourceQuota rejects pods that request nothing), and no
    # task installs kfp at start: the images hold it
    for name, ex in executors.items():
        res = ex["container"]["resources"]
        assert res["resourceCpuRequest"] == "1" and res["resourceMemoryRequest"] == "4G", name
        assert res["resourceMemoryLimit"] == "16G", name
        assert "pip install" not in " ".join(ex["container"]["command"]), name

    # retries and no caching on the registry steps; caching on for the data steps
    tasks = spec["root"]["dag"]["tasks"]["exit-handler-1"]
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert inner["register-model"]["retryPolicy"]["maxRetryCount"] == 3
    assert inner["register-model"]["cachingOptions"] == {}
    assert inner["prepare-data"]["cachingOptions"]["enableCache"] is True
    assert inner["split-data"]["cachingOptions"]["enableCache"] is True
    # the source model is found in (or registered to) MLflow: retried, never cached (the registry is its cache)
    assert inner["source-model"]["retryPolicy"]["maxRetryCount"] == 3
    assert inner["self-train-model"]["cachingOptions"]["enableCache"] is True
    # control flow: ParallelFor over candidates, Collected fan-in, dsl.If around promote, an exit handler
    assert "parameterIterator" in inner["for-loop-2"]
    gated = spec["components"]["comp-promote-when-passed"]["dag"]["tasks"]
    (cond,) = [t for t in gated.values() if t.get("triggerPolicy", {}).get("condition")]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--passed'] == true"
    assert inner["promote-when-passed"]["dependentTasks"] == ["build-report", "register-model"] or \
        set(inner["promote-when-passed"]["dependentTasks"]) == {"build-report", "register-model"}
    assert tasks["componentRef"]["name"] == "comp-exit-handler-1"
    assert spec["root"]["dag"]["tasks"]["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    sel = spec["components"]["comp-select-best"]["inputDefinitions"]["artifacts"]["models"]
    assert sel["isArtifactList"] is True

    drift_spec, drift_platform = _load(tmp_path / "waferflow-drift-monitor.yaml")
    assert drift_spec["pipelineInfo"]["name"] == "waferflow-drift-monitor"
    assert any("secretAsEnv" in v for v in drift_platform.values())
    # --registry reaches every image of every pipeline
    for name, ex in drift_spec["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == f"reg.example.com/wf/waferflow-cpu:{__version__}", name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_the_parent_mlflow_run_is_keyed_on_the_unique_kfp_run_id(tmp_path):
    from kfp import dsl

    assert main(["compile", "--out", str(tmp_path), "--profile", "full"]) == 0
    spec, _ = _load(tmp_path / "waferflow-training.yaml")
    finish = spec["root"]["dag"]["tasks"]["finish-run"]["inputs"]["parameters"]["pipeline_run"]
    assert finish["runtimeValue"]["constant"] == dsl.PIPELINE_JOB_ID_PLACEHOLDER
    start = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["start-run"]["inputs"]["parameters"]
    assert start["pipeline_run"]["runtimeValue"]["constant"] == dsl.PIPELINE_JOB_ID_PLACEHOLDER


def test_gpu_overlay_options_compile(tmp_path, monkeypatch):
    """WAFERFLOW_SET as the GPU overlay's ConfigMap writes it: one override a line, a JSON node selector whole."""
    monkeypatch.setenv("WAFERFLOW_SET", 'cluster.gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}\n'
                       "# a comment\ncluster.gpu_limit=2\n")
    assert main(["compile", "--out", str(tmp_path), "--profile", "full"]) == 0
    _, platform = _load(tmp_path / "waferflow-training.yaml")
    assert platform["exec-train-candidate"]["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}


def test_a_bad_waferflow_set_line_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAFERFLOW_SET", "cluster.gpu_limit=2\nnot-an-override\n")
    assert main(["compile", "--out", str(tmp_path), "--profile", "full"]) == 2
    assert "WAFERFLOW_SET line 2" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.yaml"))


def test_local_profile_trains_on_cpu_but_tensorrt_still_needs_the_gpu_pool(tmp_path):
    assert main(["compile", "--out", str(tmp_path), "--profile", "local"]) == 0
    spec, platform = _load(tmp_path / "waferflow-training.yaml")
    ex = spec["deploymentSpec"]["executors"]
    assert "accelerator" not in (ex["exec-train-candidate"]["container"].get("resources") or {})
    assert "nodeSelector" not in platform["exec-train-candidate"]
    assert ex["exec-compile-tensorrt"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "nodeSelector" in platform["exec-compile-tensorrt"]


def test_compile_refuses_a_file_as_out(tmp_path, capsys):
    f = tmp_path / "x.yaml"
    f.write_text("keep me")
    assert main(["compile", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_unknown_profile_key_is_rejected(tmp_path, capsys):
    assert main(["compile", "--out", str(tmp_path), "--set", "cluster.gpu_limt=2"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.yaml"))


def test_a_data_pvc_is_mounted_in_the_data_and_drift_tasks(tmp_path):
    assert main(["compile", "--out", str(tmp_path), "--profile", "full", "--set", "cluster.data_pvc=fab-maps",
                 "--set", "cluster.data_mount_path=/maps"]) == 0
    for pipeline, executor in (("waferflow-training", "exec-prepare-data"), ("waferflow-drift-monitor", "exec-check-drift")):
        _, platform = _load(tmp_path / f"{pipeline}.yaml")
        (mount,) = platform[executor]["pvcMount"]
        assert mount["mountPath"] == "/maps", mount
        assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "fab-maps", mount
        assert sum("pvcMount" in ex for ex in platform.values()) == 1, pipeline
