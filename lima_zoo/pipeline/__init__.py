"""Embedding and labelling many scans as a library (what ``lima-zoo embed`` and ``predict`` run):
inputs and shards (``inputs.py``), the read-ahead / embed / write loop with its options and report
(``embed.py``), the same loop with a segmentation model and label files (``predict.py``), the
Parquet dataset writer with its manifests (``parquet_dataset.py``) and the Ray engine
(``ray_engine.py``). Imports no click; torch only through the encoder it is given.

    from lima_zoo import load_encoder
    from lima_zoo.pipeline import EmbedOptions, collect_inputs, run_embed

    report = run_embed(collect_inputs(["scans/"]), load_encoder("runs/tiny/encoder"), Path("feats"),
                       EmbedOptions(fmt="parquet-dataset"))
"""

from .embed import OUTPUT_FORMATS, EmbedOptions, EmbedReport, plan_outputs, run_embed
from .inputs import collect_inputs, inputs_from_list, shard_of, take_shard
from .predict import PREDICT_FORMATS, PredictOptions, run_predict

__all__ = [
    "EmbedOptions",
    "EmbedReport",
    "run_embed",
    "plan_outputs",
    "collect_inputs",
    "inputs_from_list",
    "shard_of",
    "take_shard",
    "OUTPUT_FORMATS",
    "PredictOptions",
    "run_predict",
    "PREDICT_FORMATS",
]
