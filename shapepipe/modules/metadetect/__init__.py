"""Metadetection on stacked tiles: detect and measure on metacal-sheared cell images.

:mod:`.moments` (Gaussian-weighted moments, vectorised), :mod:`.cell` (one cell: sheared
images, sep detection, measurement) and :mod:`.process` (a tile cut into cells, the
catalogue ``metadetect_cat-<tile>.fits``). Nothing here imports the pipeline.
"""

from shapepipe.modules.metadetect.cell import DetectConfig, metadetect_cell, tile_noise
from shapepipe.modules.metadetect.process import process_tile

__all__ = ["DetectConfig", "metadetect_cell", "process_tile", "tile_noise"]
