"""One error shape for every route: {"error": {"message", "type", "param", "code"}} with a 4xx/5xx."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_funds",
          403: "permission_error", 404: "not_found_error", 409: "conflict_error",
          413: "invalid_request_error", 502: "upstream_error", 503: "unavailable_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def from_validation(exc: ValidationError | RequestValidationError) -> ApiError:
    """The first pydantic error as an ApiError naming the field at fault."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"] if p != "body") or None
    message = f"{param}: {err['msg']}" if param else err["msg"]
    return ApiError(400, message, "invalid_parameter", param)


def install(app: FastAPI) -> None:
    """Route every error, FastAPI's own included, through the one shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return ApiError(exc.status_code, str(exc.detail), code).response()

