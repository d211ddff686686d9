"""``python -m tasp_plugin.cli ...`` (what torchrun launches for ``tasp bench``)."""

import sys

from .main import main

sys.exit(main())
