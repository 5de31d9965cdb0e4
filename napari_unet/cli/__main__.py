"""``python -m napari_unet.cli``: the ``napari-unet`` command."""

import sys

from . import main

if __name__ == "__main__":  # not when a walk over the package imports it
    sys.exit(main())
