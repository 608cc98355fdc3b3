#!/usr/bin/env python
"""Build the tiny model of the embedded default: `python scripts/build_tiny_model.py --out DIR`.

The builder lives in shadowreplay/embedded/tiny_model.py (its docstring says what it writes); this
script is the command scripts/setup.sh runs.
"""

import sys

from shadowreplay.embedded.tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
