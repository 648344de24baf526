"""Training the toy-world TI2V model: text encoder, VAE stage, DiT stage and export.

The command line is `python -m wan.toyworld.train`; docs/TRAINING.md explains the recipe.
"""
