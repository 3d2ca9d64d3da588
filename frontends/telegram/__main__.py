"""``python -m frontends.telegram``: run the bot."""

import sys

from frontends.telegram.program import main

sys.exit(main())
