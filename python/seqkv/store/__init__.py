"""The session store: tokens of every session in one shared prefix trie, coded into a backend,
with their KV kept hot, warm or cold (``docs/architecture.md``)."""

from .session_store import SessionStore
from .tiers import Tiers

__all__ = ["SessionStore", "Tiers"]
