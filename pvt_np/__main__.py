"""``python -m pvt_np`` is the ``pvt-np`` command."""

import sys

from pvt_np.cli import main

sys.exit(main())
