"""Data stage: generate synthetic wafer maps, or ingest the user's own."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_data(
    source: str,
    source_fingerprint: str,
    n_maps: int,
    map_size: int,
    taxonomy: str,
    seed: int,
    dataset: Output[Dataset],
    unlabeled: Output[Dataset],
    pool_size: int = 0,
    unlabeled_source: str = "",
    unlabeled_fingerprint: str = "",
):
    """Write the labeled maps (and any unlabeled ones) as Dataset folders holding ``data.npz`` + manifest.

    Args:
        source: "" for synthetic maps, else maps the task can read (``.npz``, ``LSWMD.pkl``, PNG folder): a path
            (here, or under the PVC of ``cluster.data_pvc``), ``s3://BUCKET/KEY`` or ``runs:/RUN_ID/PATH``.
        source_fingerprint: Content hash of ``source`` (the launcher computes it) so the cache key follows the
            content, not the path.
        n_maps: Synthetic maps to generate.
        map_size: Synthetic map size; for ingest, the size maps are resized to (0 keeps their own sizes).
        taxonomy: Synthetic taxonomy.
        seed: Generation seed (and the pool sample's).
        pool_size: The unlabeled maps are sampled to at most this many, evenly over their lots (0 = all).
        unlabeled_source: "" or more unlabeled maps, read as ``source`` is (any labels in them are dropped, and
            maps identical to one of ``source`` too): with ``source``'s own unlabeled maps they form the pool
            (``waferflow.data.pool``).
        unlabeled_fingerprint: Content hash of ``unlabeled_source`` (the cache key follows it).
    """
    import os

    from waferflow.data.contract import save_dataset
    from waferflow.orchestration.runtime import dataset_file, stage, versions

    with stage("data", source=source or "synthetic") as rec:
        n_unlabeled = 0
        if source:
            import tempfile

            from waferflow.data.ingest import ingest
            from waferflow.data.pool import drop_known, join_pools, read_pool
            from waferflow.orchestration.sources import fetch_source

            with tempfile.TemporaryDirectory(prefix="waferflow-source-") as tmp:  # a download lives only here
                result = ingest(str(fetch_source(source, os.path.join(tmp, "data"))), size=map_size or None)
                labeled_ds, more = result.dataset, None
                if unlabeled_source:
                    more = read_pool(str(fetch_source(unlabeled_source, os.path.join(tmp, "pool"))),
                                     labeled_ds.class_names, size=map_size or None)
            if more is not None:  # maps also in --data (its test maps too) stay out of the pool
                n_more = len(more)
                more, (as_labeled, in_pool) = drop_known(more, labeled_ds, result.unlabeled)
                rec.update(unlabeled_source={"maps": n_more, "kept": len(more), "dropped_as_labeled": as_labeled,
                                             "dropped_already_in_pool": in_pool})
            unlabeled_ds = join_pools(labeled_ds.class_names, result.unlabeled, more)
            src = f"ingest:{source}"
        elif unlabeled_source:
            from waferflow.errors import ConfigError

            raise ConfigError(f"unlabeled maps ({unlabeled_source}) need your own labeled maps as the data source; "
                              "synthetic runs have no pool")
        else:
            from waferflow.data.synth import generate

            labeled_ds = generate(n=n_maps, size=map_size, seed=seed, taxonomy=taxonomy)
            unlabeled_ds = None
            src = f"synthetic:{taxonomy}:n={n_maps}:size={map_size}:seed={seed}"
        # Folders only once the maps exist: a failed read leaves no half-made artifact.
        os.makedirs(dataset.path, exist_ok=True)
        os.makedirs(unlabeled.path, exist_ok=True)
        manifest = save_dataset(labeled_ds, dataset_file(dataset.path), source=src)
        pool_report = None
        if unlabeled_ds is not None and len(unlabeled_ds):
            from waferflow.data.split import sample_pool

            unlabeled_ds, pool_report = sample_pool(unlabeled_ds, pool_size, seed)
            save_dataset(unlabeled_ds, dataset_file(unlabeled.path), source=src + ":unlabeled")
            n_unlabeled = len(unlabeled_ds)
        rec.update(n=len(labeled_ds), n_unlabeled=n_unlabeled, pool=pool_report)
        dataset.metadata.update(
            {
                "source": src,
                "source_fingerprint": source_fingerprint,
                "data_hash": manifest["content_sha256"],
                "n": len(labeled_ds),
                "class_names": list(labeled_ds.class_names),
                "versions": versions(),
            }
        )
        unlabeled.metadata.update({"source": src, "unlabeled_source": unlabeled_source,
                                   "unlabeled_fingerprint": unlabeled_fingerprint, "n": n_unlabeled,
                                   "pool": pool_report})
