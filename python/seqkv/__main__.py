"""``python -m seqkv``: the same as the ``seqkv`` command (:mod:`seqkv.cli.main`)."""

import sys

from .cli.main import main

sys.exit(main())
