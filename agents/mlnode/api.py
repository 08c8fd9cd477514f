"""The model node's HTTP surface: a thin FastAPI router over `serving.OpenAIServing`.

Every error, including FastAPI's own validation and routing errors, leaves in the one shape
`{"error": {"message", "type", "param", "code"}}`; invalid bodies get 400, never FastAPI's 422.
Engine work runs in the thread pool so the event loop keeps answering /health and /metrics.
"""

from __future__ import annotations

import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from agents.mlnode.engine import Engine
from agents.mlnode.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from agents.mlnode.serving import APIError, OpenAIServing

# 64 messages of 16 KiB each fit with room to spare; anything larger is refused unread
MAX_BODY_BYTES = 2 * 1024 * 1024
SWITCH_INTERVAL_S = 0.0005  # the GIL's, see `main`

router = APIRouter()


def _serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


def _answer(result) -> Response:
    if isinstance(result, dict):
        # orjson: a validator's top-256 prompt_logprobs are megabytes, which the standard
        # library encodes several times slower, on the cores that serve requests
        return Response(orjson.dumps(result), media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream")


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return _answer(await run_in_threadpool(_serving(request).completion, body))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return _answer(await run_in_threadpool(_serving(request).chat, body))


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    return _serving(request).tokenize(body)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    return _serving(request).models()


@router.get("/health")
async def health(request: Request) -> dict:
    return _serving(request).health()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_serving(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


def validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic error as an APIError naming the field (OpenAI's `param`)."""
    err = exc.errors()[0]
    if err["type"] == "json_invalid":
        return APIError(f"malformed JSON body: {err['ctx']['error']}", None, "invalid_json")
    # drop "body" and pydantic's union-member tags ("str", "list[int]") from the location
    path = [str(p) for p in err["loc"][1:] if p not in ("str", "int") and "[" not in str(p)]
    message = err["msg"].removeprefix("Value error, ")
    if not path:
        return APIError("request body is missing" if err["type"] == "missing" else message)
    return APIError(f"{'.'.join(path)}: {message}", path[0])


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def create_app(model_dir: str | Path, served_name: str | None = None,
               threads: int | None = None) -> FastAPI:
    """The app; its lifespan loads the engine once and releases it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = await run_in_threadpool(Engine.load, model_dir, threads)
        app.state.serving = OpenAIServing(engine, served_name)
        yield
        del app.state.serving

    app = FastAPI(title="Nullius model node", lifespan=lifespan)
    app.include_router(router)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return _error_response(APIError(str(exc.detail), None, code, exc.status_code))

    @app.middleware("http")
    async def _guard_and_count(request: Request, call_next) -> Response:
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return _error_response(APIError(
                f"request body is larger than {MAX_BODY_BYTES} bytes", None,
                "body_too_large", 413))
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        m = _serving(request).metrics
        m.requests.labels(route, str(response.status_code)).inc()
        m.latency.labels(route).observe(time.perf_counter() - start)
        return response

    return app


def main(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
         served_name: str | None = None, threads: int | None = None) -> None:
    """Serve `model_dir`; `served_name` overrides the advertised name, never the spec_hash."""
    # A validation's response (tens of milliseconds of Python building top-256 prompt_logprobs)
    # and a generation's per-token steps share the GIL: with the default 5 ms interval each
    # token of a concurrent generation could wait that long for it.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # idle connections outlive httpx's 5 s keep-alive expiry, so the caller closes them first
    # (agents/node/app.py says why)
    uvicorn.run(create_app(model_dir, served_name, threads), host=host, port=port,
                log_level="warning", timeout_keep_alive=75)
