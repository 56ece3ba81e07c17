"""LiMA pretraining and downstream evaluation (needs the [train] extra for the teacher and data).

Never imported by ``import lima_zoo``.
"""
