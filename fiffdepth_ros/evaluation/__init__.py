"""Evaluation: the zero-shot relative-depth benchmarks and the sparse-anchor metric protocol.

Layer: above ``model/`` and ``scale/``; below ``cli/`` and ``training/`` (the training validation
calls :mod:`.alignment` and :mod:`.metrics`, so a run is measured exactly as the benchmark measures it).
"""
