"""FiffDepth training: turns a Stable Diffusion 2 checkpoint into a single-pass depth model.

Layers: data/ (datasets, mixing), targets.py (depth -> latent targets), losses.py and step.py
(pure tensor functions), loop.py (accelerate, checkpoints, logging), export.py (released layout).
Torch-only; nothing here imports ROS, and nothing below this package imports it.
"""
