"""The ``seqkv`` command line (:mod:`seqkv.cli.main`) and the demo (:mod:`seqkv.cli.demo`)."""

from .main import main

__all__ = ["main"]
