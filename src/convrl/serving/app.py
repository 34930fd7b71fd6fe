"""The ``convrl serve`` HTTP app (FastAPI): OpenAI-compatible chat, feedback, health, the arena.

Routes::

    POST /v1/chat/completions   OpenAI chat completions, streaming (SSE) or not
    GET  /v1/models             convrl-policy (split by session), convrl-policy@champion, @challenger
    POST /v1/feedback           {"id": <completion id>, "thumbs": true|false, "rating": 1-5, "comment": ""}
    GET  /healthz               variants, batching and trace-writer state (no API key needed)
    GET  /arena                 blind side-by-side chat; see convrl.serving.arena

Extra request fields (``extra_body`` in the openai client): ``session_id``
(or header ``X-Session-Id``, or ``user``) and ``persona`` (a bundled card).
Responses carry ``X-Session-Id`` and ``X-Convrl-Variant``; the completion id
is what ``/v1/feedback`` takes. Bad requests get a 4xx in OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``) saying what to fix;
bodies over ``serve.max_body_bytes`` get 413. With an API key set, every route
but ``/healthz`` and the arena page needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from convrl.data.personas import PersonaError
from convrl.serving.batching import GenRequest, GenResult
from convrl.serving.sessions import Session

log = logging.getLogger("convrl.serve")
ROLES = ("system", "developer", "user", "assistant")
OPEN_PATHS = ("/healthz", "/arena")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_response(status: int, message: str, param=None, code=None, kind="invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


class ChatRequest(BaseModel):
    # OpenAI clients send many optional fields (n, logprobs, tools...): keep them, check the ones that matter.
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = 1
    stream_options: dict | None = None
    user: str | None = None
    session_id: str | None = None
    persona: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, description="the completion id the chat response returned")
    thumbs: StrictBool | None = None
    rating: StrictInt | None = Field(default=None, ge=1, le=5)
    comment: str = Field(default="", max_length=4000)
    user: str = "user"


def clean_messages(raw: list[dict], limit: int) -> list[dict]:
    """Validated {"role", "content"} messages (text parts joined); ApiError says what is wrong."""
    if len(raw) > limit:
        raise ApiError(400, f"too many messages ({len(raw)}); at most {limit} per request", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m:
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role, content = m["role"], m.get("content")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role is {role!r}; allowed roles: {', '.join(ROLES)} "
                           "(tool and function messages are not supported)", f"messages[{i}].role")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"messages[{i}].content may only hold text parts", f"messages[{i}].content")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise ApiError(400, "the last message must be a non-empty user message", "messages")
    return out


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        if declared is not None:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        resp = error_response(413, f"request body too large; the limit is {self.max_bytes} bytes "
                                   "(serve.max_body_bytes)", code="body_too_large")
        await resp(scope, receive, send)


def create_app(server) -> FastAPI:
    """The app over a :class:`convrl.serving.server.Server` (models, batcher, sessions, trace writer)."""

    @asynccontextmanager
    async def lifespan(app):
        server.start()
        yield
        server.stop()

    app = FastAPI(title="convrl serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
                                  code="invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        msg = first.get("msg", "invalid value")
        if first.get("type") == "missing":
            msg = "required field is missing"
        return error_response(400, f"{where}: {msg}", param=where)

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        key = server.api_key
        if key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), key.encode()):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      code="invalid_api_key", kind="authentication_error")
        return await call_next(request)

    app.add_middleware(BodyLimit, max_bytes=server.cfg.serve.max_body_bytes)

    @app.get("/healthz")
    async def healthz():
        return server.health()

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": mid, "object": "model", "created": server.started_at,
                                            "owned_by": "convrl"} for mid in server.model_ids]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.model not in server.model_ids:
            raise ApiError(404, f"unknown model {body.model!r}; this server serves: "
                           f"{', '.join(server.model_ids)}", "model", "model_not_found")
        if body.n != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        messages = clean_messages(body.messages, server.cfg.serve.max_messages)
        max_tokens = body.max_completion_tokens or body.max_tokens or server.cfg.serve.max_new_tokens
        if max_tokens > server.cfg.serve.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of "
                           f"{server.cfg.serve.max_tokens_limit}", "max_tokens")
        sid = (request.headers.get("x-session-id") or body.session_id or body.user or f"s-{uuid.uuid4().hex}")[:200]
        try:
            session = server.sessions.get(sid, body.persona, server.model_ids[body.model])
        except PersonaError as exc:
            raise ApiError(400, str(exc), "persona") from exc
        variant = server.model_ids[body.model] or session.variant
        temperature = server.cfg.serve.temperature if body.temperature is None else body.temperature
        req = GenRequest(messages=[], max_new_tokens=max_tokens, temperature=temperature, top_p=body.top_p or 1.0,
                         prefix=session.persona.system_prompt())
        headers = {"X-Session-Id": session.session_id, "X-Convrl-Variant": variant}
        turn_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(stream_turn(server, session, variant, messages, req, turn_id, usage),
                                     media_type="text/event-stream", headers=headers)
        async with session.lock:
            req.messages = session.prompt(messages)
            res = await asyncio.wrap_future(server.engine.submit(variant, req))
            server.record_turn(session, variant, req, res, turn_id)
        return JSONResponse(completion(server, variant, turn_id, res), headers=headers)

    @app.post("/v1/feedback", status_code=202)
    async def feedback(body: FeedbackRequest):
        if body.thumbs is None and body.rating is None:
            raise ApiError(400, "feedback needs 'thumbs' (true/false) or 'rating' (an integer 1-5)", "thumbs")
        if not await asyncio.to_thread(server.turn_known, body.id):
            raise ApiError(404, f"no served completion with id {body.id!r}; send the 'id' of a chat response",
                           "id", "turn_not_found")
        server.writer.submit("feedback", turn_id=body.id, thumbs=body.thumbs, rating=body.rating,
                             comment=body.comment, source_id=body.user)
        return {"status": "queued", "id": body.id}

    from convrl.serving.arena import add_arena

    add_arena(app, server)
    return app


def completion(server, variant: str, turn_id: str, res: GenResult) -> dict:
    v = server.variants[variant]
    return {"id": turn_id, "object": "chat.completion", "created": int(time.time()),
            "model": server.public_model(variant), "system_fingerprint": f"{v.model_name}-v{v.version}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": "length" if res.finish_reason == "length" else "stop"}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                      "total_tokens": res.prompt_tokens + res.completion_tokens}}


async def stream_turn(server, session: Session, variant: str, messages: list[dict], req: GenRequest,
                      turn_id: str, include_usage: bool):
    """SSE chunks in OpenAI's ``chat.completion.chunk`` shape; a client that goes away cancels its row."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    base = {"id": turn_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": server.public_model(variant)}

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                      **extra}) + "\n\n"

    req.on_text = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
    async with session.lock:
        req.messages = session.prompt(messages)
        fut = server.engine.submit(variant, req)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, None))
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (text := await queue.get()) is not None:
                yield chunk({"content": text})
        except BaseException:
            # The client went away: stop its row; what it was sent is still a served turn, traced when done.
            req.cancelled.set()
            fut.add_done_callback(lambda f: f.exception() or server.record_turn(
                session, variant, req, f.result(), turn_id, remember=False))
            raise
        res = fut.result()
        server.record_turn(session, variant, req, res, turn_id)
    yield chunk({}, "length" if res.finish_reason == "length" else "stop")
    if include_usage:
        yield "data: " + json.dumps({**base, "choices": [], "usage": completion(server, variant, turn_id, res)[
            "usage"]}) + "\n\n"
    yield "data: [DONE]\n\n"

