"""``python -m registration.cli`` runs the ``lddmm`` command."""

import sys

from . import main

sys.exit(main())
