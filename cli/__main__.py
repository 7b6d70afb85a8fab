"""``python -m instructav2av.cli``: the ``instructav2av`` command, also for launchers that start a
module (``torchrun --nproc-per-node N -m instructav2av.cli train ...``)."""

import sys

from . import main

sys.exit(main())
