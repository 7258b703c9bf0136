"""``python -m seqkv``: the same as the ``seqkv`` command (:mod:`seqkv.cli`)."""

import sys

from .cli import main

sys.exit(main())
