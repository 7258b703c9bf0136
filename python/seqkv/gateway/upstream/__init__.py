"""Upstream engines the gateway drives (llama.cpp's ``llama-server``)."""

from .llamacpp import Completion, LlamaCppUpstream
from .process import LlamaServerProcess, ServerOptions, find_llama_server

__all__ = ["Completion", "LlamaCppUpstream", "LlamaServerProcess", "ServerOptions", "find_llama_server"]
