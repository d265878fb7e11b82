"""KFP v2 components, one file per stage. Installed as ``waferflow.components``.

Each component is thin: it reads its input artifacts' paths, calls one library
function, then writes outputs, artifact metadata and KFP UI visualizations.
"""
