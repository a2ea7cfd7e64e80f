"""Blended-galaxy training sets (CANDELS-blender's actions) and their inputs from tiles.

- :mod:`.stamps`: 128x128 stamps of isolated galaxies cut from a tile with its segmentation
  map and truth (``blend_runner``);
- :mod:`.produce`: blended pairs with per-galaxy masks and catalogues;
- :mod:`.concatenate`: stacks of blends and targets (streamed), flux tables;
- :mod:`.segmap`: neighbour replacement and mask encodings;
- :mod:`.cli`: the ``shapepipe-blender`` / ``scripts/blend.py`` command line.

Imports here stay light (numpy only) so that the command line starts fast.
"""

from shapepipe.modules.blend.io import BlendError

__all__ = ["BlendError"]
