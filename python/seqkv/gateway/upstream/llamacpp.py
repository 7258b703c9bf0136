"""The llama.cpp upstream driver: ``llama-server``'s HTTP API with token-id prompts.

Every prompt goes to ``/completion`` as token ids with ``id_slot``, ``cache_prompt: true`` and
``return_tokens: true``, so the driver knows exactly which tokens the slot evaluated and how
many it reused (``timings.cache_n``): enough to extend a session's :class:`Schedule`. Slots are
saved and restored through ``/slots/{id}?action=save|restore|erase`` into the server's
``--slot-save-path`` folder, which the driver reads to hash the KV.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import UpstreamError, UpstreamUnavailableError
from ..schedule import EngineConfig
from ..slots import SlotFile, read_slot_file
from .process import ServerOptions

__all__ = ["Completion", "LlamaCppUpstream"]


@dataclass(frozen=True)
class Completion:
    """One finished ``/completion``: the sampled tokens (the last one never evaluated), their
    text, how many prompt tokens the slot reused, and why it stopped."""

    tokens: list[int]
    text: str
    n_past: int
    n_prompt: int
    stop_type: str

    @classmethod
    def from_final(cls, body: Mapping[str, Any], tokens: list[int], text: str, n_prompt: int) -> Completion:
        timings = body.get("timings") or {}
        if "cache_n" not in timings:
            raise UpstreamError("llama-server's final answer has no timings.cache_n")
        return cls(tokens, text, int(timings["cache_n"]), n_prompt, str(body.get("stop_type", "")))


class LlamaCppUpstream:
    """An async client of one ``llama-server``; ``slot_dir`` is its ``--slot-save-path``."""

    def __init__(self, url: str, options: ServerOptions, *, timeout_s: float = 600.0, name: str | None = None):
        self.url = url.rstrip("/")
        self.options = options
        self.name = name or self.url
        self._client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=5.0))
        self._config: EngineConfig | None = None

    @property
    def slot_dir(self) -> Path:
        return self.options.slot_dir

    @property
    def n_slots(self) -> int:
        return self.options.n_parallel

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: Mapping[str, Any], params: Mapping[str, str] | None = None) -> Any:
        try:
            r = await self._client.post(path, json=dict(body), params=params)
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(f"{self.name}{path}: {exc!r}") from exc
        return _json_or_raise(r, path)

    async def healthy(self) -> bool:
        try:
            return (await self._client.get("/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def engine_config(self) -> EngineConfig:
        """The settings recorded with every schedule (build from ``/props``)."""
        if self._config is None:
            try:
                r = await self._client.get("/props")
            except httpx.TransportError as exc:
                raise UpstreamUnavailableError(f"{self.name}/props: {exc!r}") from exc
            props = _json_or_raise(r, "/props")
            o = self.options
            self._config = EngineConfig(
                build=str(props.get("build_info", "")), model=f"{o.model.name}:{o.model.stat().st_size}",
                n_batch=o.n_batch, n_ubatch=o.n_ubatch, threads=o.threads, threads_batch=o.threads,
                cache_type_k=o.cache_type_k, cache_type_v=o.cache_type_v, flash_attn=o.flash_attn,
                n_ctx_slot=o.n_ctx_slot,
            )
        return self._config

    # -- text <-> tokens (the only places text is tokenized) ------------------------------

    async def apply_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        body = await self._post("/apply-template", {"messages": list(messages)})
        return str(body["prompt"])

    async def tokenize(self, text: str) -> list[int]:
        body = await self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True})
        return [int(t) for t in body["tokens"]]

    async def tokenize_pieces(self, text: str) -> list[tuple[int, bytes]]:
        """``text``'s tokens with the bytes of each (a piece that is not whole UTF-8 comes as a
        list of byte values)."""
        body = await self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True,
                                              "with_pieces": True})
        out = []
        for t in body["tokens"]:
            piece = t["piece"]
            out.append((int(t["id"]), piece.encode() if isinstance(piece, str) else bytes(piece)))
        return out

    async def detokenize(self, tokens: Sequence[int]) -> str:
        body = await self._post("/detokenize", {"tokens": list(tokens)})
        return str(body["content"])

    # -- completions ------------------------------------------------------------------------

    def _completion_body(self, prompt: Sequence[int], slot: int, n_predict: int, sampling: Mapping[str, Any],
                         stream: bool) -> dict[str, Any]:
        return {
            **sampling, "prompt": list(prompt), "id_slot": slot, "cache_prompt": True, "return_tokens": True,
            "n_predict": n_predict, "stream": stream,
        }

    async def complete(self, prompt: Sequence[int], slot: int, n_predict: int,
                       sampling: Mapping[str, Any] | None = None) -> Completion:
        body = await self._post("/completion", self._completion_body(prompt, slot, n_predict, sampling or {}, False))
        return Completion.from_final(body, [int(t) for t in body.get("tokens", [])], str(body.get("content", "")),
                                     len(prompt))

    async def stream(self, prompt: Sequence[int], slot: int, n_predict: int,
                     sampling: Mapping[str, Any] | None = None) -> AsyncIterator[str | Completion]:
        """Text pieces as they are sampled, then the :class:`Completion`."""
        body = self._completion_body(prompt, slot, n_predict, sampling or {}, True)
        tokens: list[int] = []
        text: list[str] = []
        try:
            async with self._client.stream("POST", "/completion", json=body) as r:
                if r.status_code != 200:
                    _json_or_raise(httpx.Response(r.status_code, content=await r.aread()), "/completion")
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise UpstreamError(f"{self.name}/completion: {chunk['error']}")
                    tokens.extend(int(t) for t in chunk.get("tokens", []))
                    piece = str(chunk.get("content", ""))
                    if piece:
                        text.append(piece)
                        yield piece
                    if chunk.get("stop"):
                        yield Completion.from_final(chunk, tokens, "".join(text), len(prompt))
                        return
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(f"{self.name}/completion: {exc!r}") from exc
        raise UpstreamUnavailableError(f"{self.name}/completion: the stream ended before its final chunk")

    # -- slots --------------------------------------------------------------------------------

    def slot_path(self, filename: str) -> Path:
        return self.slot_dir / filename

    async def save_slot(self, slot: int, filename: str) -> SlotFile:
        await self._post(f"/slots/{slot}", {"filename": filename}, params={"action": "save"})
        return read_slot_file(self.slot_path(filename))

    async def restore_slot(self, slot: int, filename: str) -> int:
        """Load a saved slot file into ``slot``; the number of tokens it holds."""
        body = await self._post(f"/slots/{slot}", {"filename": filename}, params={"action": "restore"})
        return int(body["n_restored"])

    async def slot_info(self, slot: int) -> dict[str, Any]:
        """The server's ``/slots`` entry of ``slot`` (its last task id, cached token count ...)."""
        try:
            r = await self._client.get("/slots")
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(f"{self.name}/slots: {exc!r}") from exc
        for info in _json_or_raise(r, "/slots"):
            if int(info.get("id", -1)) == slot:
                return dict(info)
        raise UpstreamError(f"{self.name} has no slot {slot}")

    async def erase_slot(self, slot: int) -> None:
        await self._post(f"/slots/{slot}", {}, params={"action": "erase"})

    def remove_slot_file(self, filename: str) -> None:
        try:
            os.unlink(self.slot_path(filename))
        except FileNotFoundError:
            pass


def _json_or_raise(r: httpx.Response, path: str) -> Any:
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"message": r.text[:200]}}
    if r.status_code in (502, 503, 504):
        raise UpstreamUnavailableError(f"{path}: HTTP {r.status_code}: {body}")
    if r.status_code != 200:
        raise UpstreamError(f"{path}: HTTP {r.status_code}: {body.get('error', body) if isinstance(body, dict) else body}")
    return body
