"""``python -m receiver.cli``: the same as the ``taskhook`` script."""

import sys

from receiver.cli.main import main

sys.exit(main())
