#!/usr/bin/env python
"""Blended-galaxy training sets: ``python scripts/blend.py produce|concatenate|convert|plot``.

The same as the ``shapepipe-blender`` console script (CANDELS-blender's actions and options);
see ``python scripts/blend.py ACTION --help``.
"""

import sys

from shapepipe.modules.blend.cli import main

if __name__ == "__main__":
    sys.exit(main())
