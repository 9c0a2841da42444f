"""The web app: HTML pages and their JSON twins (FastAPI; OpenAPI at ``/openapi.json``).

FastAPI because the API's response models are the same pydantic records the pages render, and
it derives the OpenAPI document from them. Handlers are plain functions (run in FastAPI's
thread pool): the database drivers are synchronous. Pages are Jinja2 with autoescape on; the
live parts of each page are one template that the page includes and that ``?partial=1``
returns alone, which ``static/live.js`` fetches every few seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboard import views as v
from dashboard.auth import COOKIE, Guard
from dashboard.projector import STATUSES
from dashboard.queries import BadCursor, NotFound, Queries
from dashboard.render import register_filters

#: the most items one listing page holds (the contract sets no cap; one is kept for the database)
MAX_PAGE = 200

_HERE = Path(__file__).parent
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)
_OPEN_PATHS = ("/login", "/static/")
_MAX_PARAM_CHARS = 8192


@dataclass
class WebContext:
    queries: Queries
    guard: Guard
    health: Callable[[], v.Health]
    registry: CollectorRegistry


class BadRequest(ValueError):
    pass


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    register_filters(env)
    return Jinja2Templates(env=env)


def _clean(value: str | None, name: str) -> str | None:
    """Empty form fields mean "no filter"; NUL and huge values are refused, not sent to SQL."""
    if value is None or value == "":
        return None
    if "\x00" in value or len(value) > _MAX_PARAM_CHARS:
        raise BadRequest(f"{name}: not a usable value")
    return value


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(
        title="haul web",
        version="1",
        description="The haul dashboard's JSON API: the facts of the events stream.",
        docs_url=None,
        redoc_url=None,
    )
    templates = _templates()
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    q = ctx.queries

    @app.middleware("http")
    async def blank_parameters_are_absent(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # The contract's own template, `?project=&status=&warnings=true&limit=&cursor=`, and
        # every HTML form send a filter left empty as `name=`: in the listing's API, as on the
        # pages, that is a filter not given (it was a 422 for status, warnings and limit).
        # Only there: every parameter of the listing is optional.
        query: bytes = request.scope.get("query_string", b"")
        if query and request.url.path == "/api/executions":
            kept = [p for p in query.split(b"&") if p.partition(b"=")[2]]
            request.scope["query_string"] = b"&".join(kept)
        return await call_next(request)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if ctx.guard.enabled and not path.startswith(_OPEN_PATHS):
            allowed = ctx.guard.allows(
                request.headers.get("authorization"), request.cookies.get(COOKIE)
            )
            if not allowed:
                if path.startswith("/api/") or path in {"/metrics", "/openapi.json"}:
                    return JSONResponse(
                        {"error": "unauthorized", "detail": "a bearer token or a session "
                         "cookie from /login is needed"},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )  # fmt: skip
                target = path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def api_error(status: int, error: str, detail: str) -> JSONResponse:
        return JSONResponse({"error": error, "detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
        if request.url.path.startswith("/api/"):
            return api_error(422, "invalid_request", problems[:1000])
        return page_error(request, 400, problems[:1000])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or exc.status_code == 405:
            return api_error(exc.status_code, "http_error", str(exc.detail))
        return page_error(request, exc.status_code, str(exc.detail))

    def page_error(request: Request, status: int, message: str) -> HTMLResponse:
        # An id the dashboard never saw may be one whose events were trimmed before it read
        # them: its 404 says so as every other page does (contract section 10).
        return templates.TemplateResponse(
            request,
            "error.html",
            {"title": f"{status}", "status": status, "message": message,
             "incomplete_before": q.incomplete_before()},
            status_code=status,
        )  # fmt: skip

    def page(request: Request, name: str, live: str, title: str, data: Any) -> HTMLResponse:
        context = {"title": title, "data": data, "live_url": _live_url(request),
                   "incomplete_before": getattr(data, "incomplete_before", None),
                   "request_query": dict(request.query_params)}  # fmt: skip
        if request.query_params.get("partial") == "1":
            return templates.TemplateResponse(request, live, context)
        return templates.TemplateResponse(request, name, context)

    # ------------------------------------------------------------------ JSON API

    responses: dict[int | str, dict[str, Any]] = {
        404: {"model": v.ErrorBody, "description": "unknown id"},
        400: {"model": v.ErrorBody, "description": "bad parameter"},
    }

    @app.get("/api/executions", response_model=v.ExecutionPage, responses=responses)
    def api_executions(
        project: str | None = None,
        status: v.Status | None = None,
        warnings: bool | None = None,
        limit: Annotated[
            int, Query(ge=1, description=f"items per page; above {MAX_PAGE}, {MAX_PAGE}")
        ] = 50,
        cursor: str | None = None,
    ) -> Any:
        # A larger limit is a shorter page, not an error: `next` goes on from there.
        page = min(limit, MAX_PAGE)
        try:
            return q.executions(
                _clean(project, "project"), status, warnings, page, _clean(cursor, "cursor")
            )
        except (BadCursor, BadRequest) as exc:
            return api_error(400, "bad_request", str(exc))

    @app.get(
        "/api/executions/{execution_id}", response_model=v.ExecutionDetails, responses=responses
    )
    def api_execution(execution_id: str) -> Any:
        try:
            return q.execution(_clean(execution_id, "execution_id") or "")
        except (NotFound, BadRequest) as exc:
            return api_error(404, "not_found", str(exc))

    @app.get("/api/datums/{datum_id}", response_model=v.DatumDetails, responses=responses)
    def api_datum(datum_id: str) -> Any:
        try:
            return q.datum(_clean(datum_id, "datum_id") or "")
        except (NotFound, BadRequest) as exc:
            return api_error(404, "not_found", str(exc))

    @app.get("/api/inputs", response_model=v.UrlHistory, responses=responses)
    def api_inputs(project: str, url: str) -> Any:
        try:
            return q.url_history(_clean(project, "project") or "", _clean(url, "url") or "")
        except NotFound as exc:
            return api_error(404, "not_found", str(exc))
        except BadRequest as exc:
            return api_error(400, "bad_request", str(exc))

    @app.get("/api/health", response_model=v.Health)
    def api_health() -> Any:
        return ctx.health()

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/executions", response_class=HTMLResponse, include_in_schema=False)
    def executions_page(
        request: Request,
        project: str | None = None,
        status: str | None = None,
        warnings: str | None = None,
        cursor: str | None = None,
    ) -> Response:
        try:
            status = _status(status)
            only_warned = True if warnings in {"true", "on", "1"} else None
            data = q.executions(
                _clean(project, "project"), status, only_warned, 50, _clean(cursor, "cursor")
            )
        except (BadCursor, BadRequest) as exc:
            return page_error(request, 400, str(exc))
        filters = {"project": project or "", "status": status or "",
                   "warnings": only_warned is True}  # fmt: skip
        data_ctx = _Listing(data, filters, q.projects(), STATUSES)
        return page(request, "executions.html", "_executions_live.html", "Executions", data_ctx)

    @app.get("/executions/{execution_id}", response_class=HTMLResponse, include_in_schema=False)
    def execution_page(request: Request, execution_id: str) -> Response:
        try:
            data = q.execution(_clean(execution_id, "execution_id") or "")
        except (NotFound, BadRequest) as exc:
            return page_error(request, 404, str(exc))
        return page(request, "execution.html", "_execution_live.html", execution_id, data)

    @app.get("/datums/{datum_id}", response_class=HTMLResponse, include_in_schema=False)
    def datum_page(request: Request, datum_id: str) -> Response:
        try:
            data = q.datum(_clean(datum_id, "datum_id") or "")
        except (NotFound, BadRequest) as exc:
            return page_error(request, 404, str(exc))
        return page(request, "datum.html", "_datum_live.html", f"datum {datum_id}", data)

    @app.get("/inputs", response_class=HTMLResponse, include_in_schema=False)
    def inputs_page(request: Request, project: str = "", url: str = "") -> Response:
        try:
            data = q.url_history(_clean(project, "project") or "", _clean(url, "url") or "")
        except (NotFound, BadRequest) as exc:
            return page_error(request, 404, str(exc))
        return page(request, "inputs.html", "_inputs_live.html", "URL history", data)

    # ------------------------------------------------------------------ login

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(
            request,
            "login.html",
            {"title": "Log in", "next": _safe_next(next), "failed": False,
             "enabled": ctx.guard.enabled, "incomplete_before": None},
        )  # fmt: skip

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        body = (await request.body())[:16384].decode("utf-8", "replace")
        form = parse_qs(body, max_num_fields=10)
        token = form.get("token", [""])[0]
        target = _safe_next(form.get("next", ["/"])[0])
        if ctx.guard.enabled and ctx.guard.token_ok(token):
            response = RedirectResponse(target, 303)
            response.set_cookie(
                COOKIE, ctx.guard.session_value(), httponly=True, samesite="strict",
                secure=request.url.scheme == "https", path="/",
            )  # fmt: skip
            return response
        return templates.TemplateResponse(
            request,
            "login.html",
            {"title": "Log in", "next": target, "failed": True,
             "enabled": ctx.guard.enabled, "incomplete_before": None},
            status_code=401 if ctx.guard.enabled else 404,
        )  # fmt: skip

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return app


@dataclass
class _Listing:
    page: v.ExecutionPage
    filters: dict[str, Any]
    projects: list[str]
    statuses: tuple[str, ...]

    @property
    def incomplete_before(self) -> str | None:
        return self.page.incomplete_before

    def link(self, **changes: Any) -> str:
        params = {k: val for k, val in self.filters.items() if val} | changes
        params = {k: ("true" if val is True else val) for k, val in params.items() if val}
        return "/executions" + (f"?{urlencode(params)}" if params else "")


def _status(value: str | None) -> str | None:
    value = _clean(value, "status")
    if value is not None and value not in STATUSES:
        raise BadRequest(f"status: one of {', '.join(STATUSES)}")
    return value


def _live_url(request: Request) -> str:
    params = [(k, val) for k, val in request.query_params.multi_items() if k != "partial"]
    return f"{quote(request.url.path)}?{urlencode([*params, ('partial', '1')])}"


def _safe_next(target: str) -> str:
    """Only a path on this site (no ``//host`` or scheme): /login is no open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
