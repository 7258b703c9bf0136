"""The concurrent prefix trie shared by every session: :class:`Trie`, :class:`Match`.

One radix trie over token ids, so that a prefix many sessions share (a system prompt,
few-shot examples, a document) is stored once. Each stored token carries a ``uint64``
value (a KV slot or page id, as in SGLang's RadixCache) and, optionally, the model's
log-probability of that token given its prefix.

The classes are the native ones (``seqkv._native``) re-exported with no Python layer in
between, so a call costs one native call: ``match_prefix`` on a 768-token key takes about
a microsecond. Every method releases the GIL, reads take no lock, and one ``Trie`` can be
used from any number of threads without external locking.

>>> from seqkv import Trie
>>> t = Trie()
>>> t.insert([1, 2, 3, 4], values=[10, 11, 12, 13])
4
>>> t.insert([1, 2, 7], values=[10, 11, 17])   # shares [1, 2]: stores one new token
1
>>> m = t.match_prefix([1, 2, 3, 9])
>>> m.length, m.values.tolist()
(3, [10, 11, 12])
>>> with t.pin(m.node):          # the matched values cannot be evicted while pinned
...     freed = t.evict(100)
>>> freed.tolist()
[17]

Tokens may be lists, tuples, NumPy integer arrays (any int dtype, 1-D) or torch CPU
tensors; ``namespace`` (None, str, bytes or int) separates tenants completely.
See ``docs/trie.md`` for the design.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import numpy.typing as npt

from ._native import Match, Node, Pin, Trie

__all__ = ["Trie", "Match", "Node", "Pin", "TokensLike", "Namespace"]

#: What token arguments accept (the last member stands for torch CPU tensors and other
#: objects with ``__array__``).
TokensLike = Union[Sequence[int], npt.NDArray[np.integer], Any]
#: A tenant salt.
Namespace = Union[None, str, bytes, int]
