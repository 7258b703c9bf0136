"""The gateway's HTTP API (Starlette): OpenAI-compatible, stateful.

``POST /v1/chat/completions``
    ``{"messages": [...], "session_id"?: str, "max_tokens"?: int, "stream"?: bool, ...}``. With a
    ``session_id`` of an existing chat, ``messages`` are the turn's **new** messages (the gateway
    holds the history); without one, a new chat session is created and its id returned
    (``session_id`` in the body and the ``X-Session-Id`` header).
``GET`` / ``DELETE /v1/chat/completions/{session_id}``
    the session's messages, token count, KV hash and exactness / delete it.
``POST /v1/responses``
    ``{"input": str | [messages], "previous_response_id"?: str, "instructions"?: str,
    "max_output_tokens"?: int, "stream"?: bool}``; responses form a tree (a branch shares its
    prefix). ``GET`` / ``DELETE /v1/responses/{id}``.
``GET /metrics`` (Prometheus text), ``GET /health``.

Errors are JSON ``{"error": {"message", "type"}}``: 404 for an unknown session or response id,
400 for bad input, 503 when no upstream can serve (nothing is stored then).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidInputError, SeqkvError, SessionNotFoundError
from .errors import UpstreamError, UpstreamUnavailableError
from .service import Gateway, TurnResult

__all__ = ["create_app"]

DEFAULT_MAX_TOKENS = 256


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _status_of(exc: Exception) -> JSONResponse:
    if isinstance(exc, SessionNotFoundError):
        return _error(404, str(exc.args[0]) if exc.args else "not found", "not_found")
    if isinstance(exc, UpstreamUnavailableError):
        return _error(503, f"upstream unavailable: {exc}", "upstream_unavailable")
    if isinstance(exc, UpstreamError):
        return _error(502, f"upstream error: {exc}", "upstream_error")
    if isinstance(exc, InvalidInputError):
        return _error(400, str(exc), "invalid_request_error")
    return _error(500, f"{type(exc).__name__}: {exc}", "internal_error")


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInputError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return body


def _messages(value: Any, what: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidInputError(f"{what} must be a non-empty list of messages (or a string)")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InvalidInputError(f"every message of {what} needs a role and a content")
        content = m["content"]
        if isinstance(content, list):  # Responses API parts: [{"type": "input_text", "text": ...}]
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        out.append({"role": m["role"], "content": str(content)})
    return out


def _positive(body: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        if body.get(key) is not None:
            value = body[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{key} must be a positive integer")
            return value
    return DEFAULT_MAX_TOKENS


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in ("temperature", "top_p", "seed"):
        if body.get(key) is not None:
            out[key] = body[key]
    if out.get("temperature", 0) and "top_k" not in out:
        out["top_k"] = 40
    return out


def _seqkv_info(result: TurnResult, gateway: Gateway) -> dict[str, Any]:
    node = result.node
    return {
        "node": node.id, "tokens": node.n_tokens, "kv_sha256": node.kv_sha256, "exactness": node.lineage,
        "resume": {"how": result.resume.how, "exactness": result.resume.exactness,
                   "seconds": round(result.resume.seconds, 6), "requests": result.resume.requests,
                   "kv_sha256": result.resume.kv_sha256,
                   "engine_mismatches": list(result.resume.mismatches)},
        "replica": result.replica, "cached_prompt_tokens": result.completion.n_past,
        "retokenized": result.retokenized, "stored_bytes": gateway.store.coded_bytes(node.id),
    }


def _usage(result: TurnResult) -> dict[str, int]:
    n_out = len(result.completion.tokens)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n_out,
            "total_tokens": result.prompt_tokens + n_out}


def _sse(data: Mapping[str, Any] | str, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def create_app(gateway: Gateway, *, model_name: str = "seqkv-gateway", lifespan: Any = None) -> Starlette:
    """The Starlette app serving ``gateway``."""

    async def first_result(turn: AsyncIterator[str | TurnResult]) -> TurnResult:
        async for item in turn:
            if isinstance(item, TurnResult):
                return item
        raise UpstreamUnavailableError("the turn ended without a result")

    async def streamed(turn: AsyncIterator[str | TurnResult], piece: Any, final: Any, done: str | None,
                       on_error: Any) -> AsyncIterator[str]:
        try:
            async for item in turn:
                yield piece(item) if isinstance(item, str) else final(item)
        except SeqkvError as exc:
            yield on_error(exc)
            return
        if done:
            yield done

    # -- chat completions ---------------------------------------------------------------------

    async def chat_completions(request: Request) -> Response:
        try:
            body = await _body(request)
            new = _messages(body.get("messages"), "messages")
            session_id = body.get("session_id") or request.headers.get("x-session-id")
            created_session = session_id is None
            if created_session:
                session_id = "chat_" + uuid.uuid4().hex
            max_tokens = _positive(body, "max_completion_tokens", "max_tokens")
            sampling = _sampling(body)
            lock = gateway.session_lock("chat:" + str(session_id))
        except SeqkvError as exc:
            return _status_of(exc)

        async def run() -> AsyncIterator[str | TurnResult]:
            async with lock:
                parent = None if created_session else gateway.store.chat_head(str(session_id))
                async for item in gateway.turn(parent, new, max_tokens=max_tokens, sampling=sampling):
                    if isinstance(item, TurnResult):
                        gateway.store.set_chat_head(str(session_id), item.node.id)
                    yield item

        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        headers = {"X-Session-Id": str(session_id)}

        def message(result: TurnResult) -> dict[str, Any]:
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "session_id": session_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.completion.text},
                             "finish_reason": "length" if result.completion.stop_type == "limit" else "stop"}],
                "usage": _usage(result), "seqkv": _seqkv_info(result, gateway),
            }

        if body.get("stream"):
            def piece(text: str) -> str:
                return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                             "session_id": session_id,
                             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})

            def final(result: TurnResult) -> str:
                done = message(result)
                return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                             "session_id": session_id,
                             "choices": [{"index": 0, "delta": {}, "finish_reason": done["choices"][0]["finish_reason"]}],
                             "usage": done["usage"], "seqkv": done["seqkv"]})

            def on_error(exc: SeqkvError) -> str:
                return _sse(json.loads(bytes(_status_of(exc).body)))

            return StreamingResponse(streamed(run(), piece, final, _sse("[DONE]"), on_error),
                                     media_type="text/event-stream", headers=headers)
        try:
            result = await first_result(run())
        except SeqkvError as exc:
            return _status_of(exc)
        return JSONResponse(message(result), headers=headers)

    async def chat_session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            head = gateway.store.chat_head(session_id)
            if request.method == "DELETE":
                async with gateway.session_lock("chat:" + session_id):
                    gateway.delete_chat(session_id)
                return JSONResponse({"id": session_id, "object": "chat.session.deleted", "deleted": True})
            node = gateway.store.node(head) if head else None
            return JSONResponse({
                "id": session_id, "object": "chat.session", "messages": await gateway.history(head),
                "tokens": node.n_tokens if node else 0, "kv_sha256": node.kv_sha256 if node else None,
                "exactness": node.lineage if node else None, "head": head,
            })
        except SeqkvError as exc:
            return _status_of(exc)

    # -- responses ---------------------------------------------------------------------------

    def response_object(node_id: str, previous: str | None, output_text: str,
                        result: TurnResult | None = None) -> dict[str, Any]:
        node = gateway.store.node(node_id)
        out: dict[str, Any] = {
            "id": node.id, "object": "response", "created_at": int(node.created), "status": "completed",
            "model": model_name, "previous_response_id": previous,
            "output": [{"type": "message", "id": "msg_" + node.id[5:], "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": output_text, "annotations": []}]}],
            "output_text": output_text,
            "seqkv": {"tokens": node.n_tokens, "kv_sha256": node.kv_sha256, "exactness": node.lineage},
        }
        if result is not None:
            out["usage"] = {"input_tokens": result.prompt_tokens, "output_tokens": len(result.completion.tokens),
                            "total_tokens": result.prompt_tokens + len(result.completion.tokens)}
            out["seqkv"] = _seqkv_info(result, gateway)
        return out

    async def responses(request: Request) -> Response:
        try:
            body = await _body(request)
            new = _messages(body.get("input"), "input")
            if body.get("instructions"):
                new = [{"role": "system", "content": str(body["instructions"])}, *new]
            previous = body.get("previous_response_id")
            if previous is not None:
                gateway.store.node(str(previous))
            max_tokens = _positive(body, "max_output_tokens")
            sampling = _sampling(body)
        except SeqkvError as exc:
            return _status_of(exc)
        turn = gateway.turn(previous, new, max_tokens=max_tokens, sampling=sampling)
        if body.get("stream"):
            def piece(text: str) -> str:
                return _sse({"type": "response.output_text.delta", "delta": text}, "response.output_text.delta")

            def final(result: TurnResult) -> str:
                return _sse({"type": "response.completed",
                             "response": response_object(result.node.id, previous, result.completion.text, result)}, "response.completed")

            def on_error(exc: SeqkvError) -> str:
                return _sse({"type": "error", **json.loads(bytes(_status_of(exc).body))}, "error")

            return StreamingResponse(streamed(turn, piece, final, None, on_error), media_type="text/event-stream")
        try:
            result = await first_result(turn)
        except SeqkvError as exc:
            return _status_of(exc)
        return JSONResponse(response_object(result.node.id, previous, result.completion.text, result))

    async def response_item(request: Request) -> Response:
        node_id = request.path_params["response_id"]
        try:
            node = gateway.store.node(node_id)
            if request.method == "DELETE":
                gateway.delete_response(node_id)
                return JSONResponse({"id": node_id, "object": "response", "deleted": True})
            return JSONResponse(response_object(node_id, node.parent, await gateway.output_text(node)))
        except SeqkvError as exc:
            return _status_of(exc)

    # -- operations ----------------------------------------------------------------------------

    async def metrics(request: Request) -> Response:
        lines = []
        for name, value in sorted(gateway.metrics.counters.items()):
            lines.append(f"seqkv_gateway_{name}_total {value}")
        for name, seconds in sorted(gateway.metrics.seconds.items()):
            lines.append(f"seqkv_gateway_{name}_seconds_total {seconds:.6f}")
        for key, count in gateway.store.stats().items():
            lines.append(f"seqkv_gateway_{key} {count}")
        for name, replica in gateway.replicas.items():
            label = f'{{replica="{name}"}}'
            lines.append(f"seqkv_gateway_replica_up{label} {int(gateway.router.healthy[name])}")
            lines.append(f"seqkv_gateway_slot_file_bytes{label} {replica.files.total_bytes}")
            lines.append(f"seqkv_gateway_busy_slots{label} {replica.busy()}")
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def health(request: Request) -> Response:
        up = [n for n, ok in gateway.router.healthy.items() if ok]
        return JSONResponse({"status": "ok" if up else "degraded", "replicas": gateway.router.healthy})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/chat/completions/{session_id}", chat_session, methods=["GET", "DELETE"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/responses/{response_id}", response_item, methods=["GET", "DELETE"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
