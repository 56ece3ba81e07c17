"""See what an encoder learned: PCA colours or similarity to a query point, drawn as a bird's-eye
view and a range view (``figure.py``, matplotlib), or written as coloured 3-D points
(``export3d.py``: PLY, rerun). ``views.py`` holds the numpy side (colours, rasters). Core-level:
imports the encoder's outputs only, never training."""

from .figure import MODES, render
from .views import cosine_similarity, nearest_point

__all__ = ["MODES", "render", "cosine_similarity", "nearest_point"]
