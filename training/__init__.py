"""vaesynth training: datasets, feature caches, the β-VAE model and its training loop.

This package may import torch; ``synth`` (the engine) never imports it.
"""
