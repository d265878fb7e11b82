"""What every task of every pipeline gets on a cluster (wiring helpers; kfp.local ignores all of it).

- an image under the profile's registry prefix, tagged with the package version;
- CPU and memory requests and a memory limit, so a namespace with a ResourceQuota admits the pod;
- on the GPU pool: node selector, toleration and accelerator limit;
- where a task talks to MLflow or S3: the pipeline Secret as environment variables;
- where a task reads user data: the data PVC, when the profile names one;
- where a task changes MLflow state: retries with backoff and no caching.

``TASKS`` says, per component, which of these its task needs; :func:`place` applies them. It is the one place
where a pipeline's images, resources, Secret, volumes, retries and caching are set.
"""

from dataclasses import dataclass

from kfp import dsl, kubernetes

from waferflow.profiles import ClusterOptions


@dataclass(frozen=True)
class Needs:
    """What one component's task needs on a cluster besides requests (every task gets those)."""

    image: str = "cpu"  # "gpu": the GPU image (the CPU one with ``cluster.cpu_only``)
    gpu_pool: bool = False  # scheduled on the GPU node pool with an accelerator
    secret: bool = False  # MLflow/S3 settings and credentials from the pipeline Secret
    data: bool = False  # reads the user's data: the Secret and the data PVC
    retry: bool = False  # talks to MLflow: retried with backoff, never cached
    cache: bool = True


#: component name -> its needs. A component missing here is refused by :func:`place`.
TASKS: dict[str, Needs] = {
    "prepare-data": Needs(data=True),
    "start-run": Needs(secret=True, retry=True),
    "split-data": Needs(),
    # finds or registers the source model in MLflow: never cached (the registry is its cache), retried
    "source-model": Needs(image="gpu", secret=True, retry=True),
    "adapt-batchnorm": Needs(secret=True),  # an MLflow model URI may be the pretrained source
    "train-candidate": Needs(image="gpu", secret=True),  # the train image is the GPU one either way
    "evaluate-model": Needs(),
    "select-best": Needs(),
    "self-train-model": Needs(image="gpu"),
    "correct-prior": Needs(),
    "interpolate-source": Needs(),
    "export-model": Needs(),
    "compile-tensorrt": Needs(image="gpu", gpu_pool=True),
    "log-to-mlflow": Needs(secret=True, retry=True),
    "register-model": Needs(secret=True, retry=True),
    "build-label-queue": Needs(),
    "build-report": Needs(cache=False),
    "promote-model": Needs(secret=True, retry=True),
    "finish-run": Needs(secret=True, retry=True),
    "check-drift": Needs(data=True, cache=False),
    "start-training": Needs(secret=True, cache=False),
}


def place(task: dsl.PipelineTask, c: ClusterOptions, gpu_pool: bool | None = None) -> dsl.PipelineTask:
    """Apply ``TASKS[task's component]`` to ``task``: image, requests, GPU pool, Secret, data PVC, retries, caching.

    Args:
        gpu_pool: Overrides the table's ``gpu_pool`` (training goes to the GPU pool when the profile trains on CUDA).
    """
    name = task.component_spec.name
    if name not in TASKS:
        raise KeyError(f"pipelines/_cluster.py: TASKS has no entry for component {name!r}; add what it needs")
    n = TASKS[name]
    if n.gpu_pool if gpu_pool is None else gpu_pool:
        on_gpu_pool(task, c)
    else:
        with_resources(task.set_container_image(c.image("cpu" if c.cpu_only else n.image)), c)
    if n.data:
        with_data(task, c)
    elif n.secret:
        with_secret(task, c)
    if n.retry:
        flaky(task, c)
    elif not n.cache:
        task.set_caching_options(enable_caching=False)
    return task


def on_cpu(task: dsl.PipelineTask, c: ClusterOptions) -> dsl.PipelineTask:
    """The CPU image and the profile's requests/limit."""
    task.set_container_image(c.image("cpu"))
    return with_resources(task, c)


def with_resources(task: dsl.PipelineTask, c: ClusterOptions) -> dsl.PipelineTask:
    """CPU and memory requests plus a memory limit (a ResourceQuota rejects pods that request nothing)."""
    return task.set_cpu_request(c.cpu_request).set_memory_request(c.memory_request).set_memory_limit(c.memory_limit)


def on_gpu_pool(task: dsl.PipelineTask, c: ClusterOptions) -> dsl.PipelineTask:
    """The GPU image, node selector, toleration, accelerator limit and requests (the CPU image with
    ``cluster.cpu_only``)."""
    if c.cpu_only:
        return on_cpu(task, c)
    task.set_container_image(c.image("gpu"))
    for k, v in c.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=k, label_value=v)
    if c.gpu_toleration_key:
        kubernetes.add_toleration(task, key=c.gpu_toleration_key, operator="Exists", effect=c.gpu_toleration_effect)
    task.set_accelerator_type(c.accelerator_type).set_accelerator_limit(c.gpu_limit)
    return with_resources(task, c)


def with_secret(task: dsl.PipelineTask, c: ClusterOptions) -> dsl.PipelineTask:
    """MLflow and S3 settings and credentials from the pipeline Secret, as environment variables."""
    kubernetes.use_secret_as_env(task, secret_name=c.secret_name, secret_key_to_env=dict(c.secret_env))
    return task


def with_data(task: dsl.PipelineTask, c: ClusterOptions) -> dsl.PipelineTask:
    """The user's data: the Secret (S3/MLflow sources) and, when ``cluster.data_pvc`` is set, that PVC."""
    with_secret(task, c)
    if c.data_pvc:
        kubernetes.mount_pvc(task, pvc_name=c.data_pvc, mount_path=c.data_mount_path)
    return task


def flaky(task: dsl.PipelineTask, c: ClusterOptions) -> dsl.PipelineTask:
    """Registry/network steps: retried with backoff, never cached (they change MLflow state)."""
    task.set_retry(num_retries=c.retries, backoff_duration="5s", backoff_factor=2.0, backoff_max_duration="120s")
    task.set_caching_options(enable_caching=False)
    return task
