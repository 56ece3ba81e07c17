"""LiMA pretraining and downstream evaluation (needs the [train] extra for the teacher and data).

``lima/`` is the method (one file per paper box); ``run.py`` is the run skeleton that
``trainer.py`` (pretraining) and ``downstream.py`` (linear probe, fine-tuning) share; ``datasets/``
reads nuScenes, SemanticKITTI, Waymo and sequence folders. Never imported by ``import lima_zoo``.
"""
