"""Label-queue stage: the unlabeled maps whose labels would help the selected model most."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build_label_queue(model: Input[Model], unlabeled: Input[Dataset], n: int, queue: Output[Artifact]):
    """Write ``queue.csv`` (an empty ``label`` column to fill in), ``queue.png`` (the maps as a sheet) and
    ``queue.json`` for the ``n`` unlabeled maps the selected model is least sure of, spread over its embedding.
    With no unlabeled maps (synthetic data) ``queue.json`` says so and nothing else is written.

    Args:
        model: The selected model folder.
        unlabeled: Unlabeled maps from the data stage (may hold none).
        n: Maps to queue (0 = no queue).
    """
    import os

    from waferflow.config import atomic_write_json
    from waferflow.data.contract import load_dataset
    from waferflow.labelqueue import build_queue, write_queue
    from waferflow.models import read_spec
    from waferflow.orchestration.runtime import dataset_file, stage, versions

    with stage("label_queue", n=n) as rec:
        os.makedirs(queue.path, exist_ok=True)
        path = dataset_file(unlabeled.path)
        if n <= 0 or not path.exists():
            why = "label_queue=0" if n <= 0 else "the data has no unlabeled maps"
            atomic_write_json(os.path.join(queue.path, "queue.json"), {"skipped": why})
            queue.metadata.update({"skipped": why})
            print(f"[waferflow] label queue skipped: {why}")
            rec.update(skipped=why)
            return
        ds = load_dataset(path)
        info = write_queue(build_queue(model.path, ds, n=n), ds, queue.path, list(read_spec(model.path).class_names))
        print(f"[waferflow] label queue: {info['n']} of {len(ds)} unlabeled maps -> "
              f"{os.path.join(queue.path, 'queue.csv')} (sheet queue.png)")
        queue.metadata.update({"n": info["n"], "pool_size": info["pool_size"], "csv": os.path.join(queue.path, "queue.csv"),
                               "versions": versions()})
        rec.update(n=info["n"])
