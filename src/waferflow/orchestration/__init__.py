"""Launchers around kfp (kfp.local runs, kfp.Client submit/schedule).

This is the only part of ``waferflow`` besides ``waferflow.components`` and
``waferflow.pipelines`` that imports kfp, and it does so lazily inside functions.
"""
