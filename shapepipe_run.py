#!/usr/bin/env python
"""Run the ShapePipe pipeline: ``shapepipe_run.py -c config.ini``."""

import sys

from shapepipe.run import main

if __name__ == "__main__":
    sys.exit(main())
