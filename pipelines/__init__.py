"""KFP v2 pipelines (wiring only). Installed as ``waferflow.pipelines``."""
