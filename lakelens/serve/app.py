"""`lakelens serve`: the review app for fraud-risk teams, a Starlette app over the lake's catalog.

Pages (`/login`, `/`, `/clusters/{key}`, `/clusters/{key}/members`, `/transactions/{id}`) and a JSON
API under `/api/`. Reads go through `infra.review_queries.ReviewCatalog`; the one write, a verdict,
through `infra.reviews` (a new file per verdict). Authentication: a session cookie from `POST /login`
(state-changing requests then carry the CSRF token, from `<meta name="csrf-token">`, in
`X-CSRF-Token` or a `csrf_token` form field) or `Authorization: Bearer TOKEN` for scripts.
Without an auth file the app serves loopback only, to the local user, as a reviewer.
"""

from __future__ import annotations

import getpass
import hmac
import json
import logging
import math
import re
import threading
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lakelens.infra.contracts import VERDICTS
from lakelens.infra.review_queries import (LINEAGE, SORTS, VERDICT_FILTERS, LakeUnavailable, ReviewCatalog,
                                           valid_cluster_key, valid_transaction_id)
from lakelens.infra.storage import Lake
from lakelens.serve.auth import (ROLES, AuthFileError, LoginThrottle, Sessions, User, UserStore, add_user,
                                 remove_user, valid_username)

log = logging.getLogger("lakelens.serve")
HERE = Path(__file__).resolve().parent
COOKIE = "lakelens_session"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_BODY = 64 * 1024
MEMBERS_PER_PAGE = 25
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
TRANSACTION_COLUMNS = ("ts", "amount", "currency", "status", "label", "payment_method", "account_age_days",
                       "txn_velocity_24h", "amount_to_user_avg", "is_new_device", "ip_country_mismatch", "hour_of_day")


def plotly_js() -> Path:
    """plotly.js as the plotly wheel ships it: served by the app, never from a CDN."""
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is not installed; it ships the plotly.js the app serves")
    return Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK_HOSTS or host.startswith("127.")


# -- JSON --------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


class ApiResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(_plain(content), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- security headers (plain ASGI middleware: no per-request task overhead) -------------------------

class SecurityHeaders:
    def __init__(self, app: Callable, tls: bool) -> None:
        self.app, self.tls = app, tls

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")
        secure = self.tls or scope.get("scheme") == "https"

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                headers += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                            (b"cross-origin-opener-policy", b"same-origin"),
                            (b"cache-control", b"public, max-age=3600" if static else b"no-store")]
                if secure:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- the app -------------------------------------------------------------------------------------

class ReviewApp:
    """Holds the catalog, the users and the sessions; builds the Starlette app."""

    def __init__(self, lake: Lake, auth_file: str | Path | None = None, *, recheck_s: float = 2.0,
                 session_idle_s: float = 1800.0, session_absolute_s: float = 12 * 3600.0,
                 throttle: LoginThrottle | None = None, tls: bool = False, local_user: str | None = None,
                 precompute: bool = True) -> None:
        self.catalog = ReviewCatalog(lake, recheck_s=recheck_s, precompute=precompute)
        self.users = UserStore(auth_file) if auth_file else None
        self.local_user = User(local_user or _os_user(), "reviewer")
        self.sessions = Sessions(session_idle_s, session_absolute_s)
        self.throttle = throttle or LoginThrottle()
        self.tls = tls
        self._argon = threading.BoundedSemaphore(2)  # argon2 takes 64 MiB per verification: bound the memory
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"], default=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(pct=_pct, num=_num, when=_when, day=_day)
        self.templates.globals.update(verdicts=VERDICTS, lineage=LINEAGE, sorts=tuple(SORTS),
                                      verdict_filters=VERDICT_FILTERS)

    # -- who is asking ---------------------------------------------------------------------------

    def identify(self, request: Request) -> tuple[User | None, Any]:
        """(user, session); a bearer token has no session and needs no CSRF token."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or self.users is None:
                return None, None
            return self.users.from_token(token.strip()), None
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None, None
        if self.users is None:
            return self.local_user, session
        user = self.users.user(session.user_name)
        if user is None:  # removed since login
            self.sessions.drop(session.sid)
            return None, None
        return user, session

    def require(self, request: Request, role: str = "viewer") -> tuple[User, Any]:
        user, session = self.identify(request)
        if user is None and self.users is None and not _is_api(request):
            session = self.sessions.create(self.local_user.name)  # local mode: a session on first visit
            request.state.new_session = session
            user = self.local_user
        if user is None and self.users is None and _is_api(request) and request.method == "GET":
            user = self.local_user
        if user is None:
            raise HTTPException(401, "sign in first")
        if not user.can(role):
            raise HTTPException(403, f"this needs the {role} role; you are a {user.role}")
        return user, session

    def check_csrf(self, request: Request, session: Any, form_token: str | None = None) -> None:
        """A state-changing request made with the session cookie must echo the session's CSRF token."""
        if session is None:
            if request.headers.get("authorization"):
                return  # bearer tokens are not sent by browsers on their own
            raise HTTPException(403, "missing CSRF token")
        sent = request.headers.get("x-csrf-token") or form_token or ""
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise HTTPException(403, "missing or wrong CSRF token")

    # -- rendering ----------------------------------------------------------------------------------

    def page(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        user, session = getattr(request.state, "who", (None, None))
        session = getattr(request.state, "new_session", None) or session
        context = {"user": user, "csrf": session.csrf if session else "", "request": request,
                   "auth_enabled": self.users is not None, **context}
        response = HTMLResponse(self.templates.get_template(name).render(context), status_code=status)
        if getattr(request.state, "new_session", None):
            self.set_cookie(request, response, request.state.new_session.sid)
        return response

    def set_cookie(self, request: Request, response: Response, sid: str) -> None:
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/",
                            secure=self.tls or request.url.scheme == "https",
                            max_age=int(self.sessions.absolute_s))

    # -- route helpers ------------------------------------------------------------------------------

    def viewer_page(self, handler: Callable, role: str = "viewer") -> Callable:
        def endpoint(request: Request) -> Response:
            try:
                request.state.who = self.require(request, role)
            except HTTPException as exc:
                if exc.status_code == 401:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
                raise
            return handler(request)
        return endpoint

    def api(self, handler: Callable, role: str = "viewer") -> Callable:
        def endpoint(request: Request) -> Response:
            request.state.who = self.require(request, role)
            return handler(request)
        return endpoint

    def build(self) -> Starlette:
        page, api = self.viewer_page, self.api
        routes = [
            Route("/healthz", lambda r: PlainTextResponse("ok")),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", page(self.clusters_page)),
            Route("/clusters/{cluster_key}", page(self.cluster_page)),
            Route("/clusters/{cluster_key}/members", page(self.members_page)),
            Route("/clusters/{cluster_key}/reviews", self.review_form_post, methods=["POST"]),
            Route("/transactions/{transaction_id}", page(self.transaction_page)),
            Route("/admin/users", page(self.users_page, role="admin")),
            Route("/api/clusters", api(self.api_clusters)),
            Route("/api/clusters/{cluster_key}", api(self.api_cluster)),
            Route("/api/clusters/{cluster_key}/members", api(self.api_members)),
            Route("/api/clusters/{cluster_key}/reviews", api(self.api_reviews), methods=["GET"]),
            Route("/api/clusters/{cluster_key}/reviews", self.api_post_review, methods=["POST"]),
            Route("/api/transactions/{transaction_id}/events", api(self.api_events)),
            Route("/api/users", api(self.api_users, role="admin"), methods=["GET"]),
            Route("/api/users", self.api_add_user, methods=["POST"]),
            Route("/api/users/{name}", self.api_remove_user, methods=["DELETE"]),
            Route("/static/vendor/plotly.min.js", self.plotly),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        app = Starlette(routes=routes, max_body_size=MAX_BODY,
                        exception_handlers={HTTPException: self.on_http_error, LakeUnavailable: self.on_lake_down,
                                            Exception: self.on_error})
        app.add_middleware(SecurityHeaders, tls=self.tls)
        if self.users is None:
            app.add_middleware(LoopbackOnly)
        return app

    # -- errors -------------------------------------------------------------------------------------

    def on_http_error(self, request: Request, exc: HTTPException) -> Response:
        if _is_api(request):
            return ApiResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return self.page(request, "error.html", {"status": exc.status_code, "message": exc.detail},
                         status=exc.status_code)

    def on_lake_down(self, request: Request, exc: Exception) -> Response:
        log.warning("lake unavailable: %s", exc)
        message = "The lake cannot be read right now; published results will show again once it can."
        if _is_api(request):
            return ApiResponse({"error": message}, status_code=503)
        return self.page(request, "error.html", {"status": 503, "message": message}, status=503)

    def on_error(self, request: Request, exc: Exception) -> Response:
        log.error("error serving %s: %s: %s", request.url.path, type(exc).__name__, exc, exc_info=exc)
        if _is_api(request):
            return ApiResponse({"error": "internal error"}, status_code=500)
        return self.page(request, "error.html", {"status": 500, "message": "Something went wrong on our side."},
                         status=500)

    # -- login ---------------------------------------------------------------------------------------

    def login_form(self, request: Request) -> Response:
        if self.users is None:
            return RedirectResponse("/", status_code=303)
        return self.page(request, "login.html", {"next": _safe_next(request.query_params.get("next")),
                                                 "error": None})

    async def login(self, request: Request) -> Response:
        if self.users is None:
            return RedirectResponse("/", status_code=303)
        _same_origin(request)
        form = await request.form()
        name, password = str(form.get("username", ""))[:200], str(form.get("password", ""))[:1024]
        target = _safe_next(str(form.get("next", "")))
        client = request.client.host if request.client else "?"
        wait = self.throttle.retry_after(name, client)
        if wait > 0:
            return self.page(request, "login.html", {
                "next": target, "error": f"Too many failed sign-ins. Try again in {math.ceil(wait)} s."},
                status=429) if not _wants_json(request) else ApiResponse(
                {"error": "too many failed sign-ins"}, status_code=429)
        from starlette.concurrency import run_in_threadpool

        user = await run_in_threadpool(self._verify, name, password)
        if user is None:
            self.throttle.failed(name, client)
            log.info("failed sign-in from %s", client)
            if _wants_json(request):
                return ApiResponse({"error": "invalid user name or password"}, status_code=401)
            return self.page(request, "login.html", {"next": target, "error": "Invalid user name or password."},
                             status=401)
        self.throttle.succeeded(name)
        session = self.sessions.create(user.name)
        log.info("%s signed in (%s)", user.name, user.role)
        response = (ApiResponse({"user": user.name, "role": user.role, "csrf_token": session.csrf})
                    if _wants_json(request) else RedirectResponse(target, status_code=303))
        self.set_cookie(request, response, session.sid)
        return response

    def _verify(self, name: str, password: str) -> User | None:
        with self._argon:
            return self.users.authenticate(name, password)  # type: ignore[union-attr]

    async def logout(self, request: Request) -> Response:
        user, session = self.identify(request)
        form = await request.form()
        if session is not None:
            self.check_csrf(request, session, str(form.get("csrf_token", "")))
            self.sessions.drop(session.sid)
        response = RedirectResponse("/login" if self.users else "/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- pages --------------------------------------------------------------------------------------

    def clusters_page(self, request: Request) -> Response:
        params = request.query_params
        try:
            listing = self.catalog.list_clusters(params.get("partition") or None, params.get("lineage") or None,
                                                 params.get("verdict") or None, params.get("sort") or "risk")
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return self.page(request, "clusters.html", {"listing": listing, "filters": dict(params)})

    def _cluster_or_404(self, request: Request) -> dict[str, Any]:
        key = request.path_params["cluster_key"]
        cluster = self.catalog.cluster(key) if valid_cluster_key(key) else None
        if cluster is None:
            raise HTTPException(404, "no such cluster in the published runs")
        return cluster

    def _cluster_view(self, cluster: dict[str, Any]) -> dict[str, Any]:
        key, run_id = cluster["cluster_key"], cluster["run_id"]
        history = self.catalog.history(key)
        points = self.catalog.cluster_map(run_id)
        return {"cluster": cluster, "rules": self.catalog.rules(key, run_id), "history": history,
                "reviews": self.catalog.reviews(key), "map": points,
                "plots": {"history": history_figure(history), "map": map_figure(points, key)}}

    def cluster_page(self, request: Request) -> Response:
        cluster = self._cluster_or_404(request)
        view = self._cluster_view(cluster)
        view["members"] = self.catalog.members(cluster["cluster_key"], cluster["run_id"], 1, 10)
        return self.page(request, "cluster.html", view)

    def members_page(self, request: Request) -> Response:
        cluster = self._cluster_or_404(request)
        page = _page_number(request)
        members = self.catalog.members(cluster["cluster_key"], cluster["run_id"], page, MEMBERS_PER_PAGE)
        return self.page(request, "members.html", {"cluster": cluster, "members": members,
                                                   "columns": TRANSACTION_COLUMNS})

    def transaction_page(self, request: Request) -> Response:
        tid = request.path_params["transaction_id"]
        found = self.catalog.transaction_events(tid) if valid_transaction_id(tid) else None
        if found is None:
            raise HTTPException(404, "no such transaction among the clustered ones")
        return self.page(request, "transaction.html", {"found": found, "columns": TRANSACTION_COLUMNS})

    def users_page(self, request: Request) -> Response:
        return self.page(request, "users.html", {"users": self.users.names() if self.users else []})

    async def review_form_post(self, request: Request) -> Response:
        user, session = self.require(request, "viewer")
        request.state.who = (user, session)
        form = await request.form()
        self.check_csrf(request, session, str(form.get("csrf_token", "")))
        if not user.can("reviewer"):
            raise HTTPException(403, "recording a verdict needs the reviewer role")
        key = request.path_params["cluster_key"]
        verdict, comment = str(form.get("verdict", "")), str(form.get("comment", ""))
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(self._record, key, verdict, comment, user, str(form.get("run_id", "")) or None)
        return RedirectResponse(f"/clusters/{quote(key)}#reviews", status_code=303)

    def _record(self, key: str, verdict: str, comment: str, user: User, run_id: str | None) -> dict[str, Any]:
        if not valid_cluster_key(key) or self.catalog.cluster(key) is None:
            raise HTTPException(404, "no such cluster in the published runs")
        if verdict not in VERDICTS:
            raise HTTPException(422, f"verdict must be one of {', '.join(VERDICTS)}")
        try:
            return self.catalog.record(key, verdict, user.name, comment, run_id)
        except LookupError as exc:
            raise HTTPException(404, "no such cluster (or run) in the published runs") from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    def plotly(self, request: Request) -> Response:
        return FileResponse(plotly_js(), media_type="text/javascript")

    # -- the API ------------------------------------------------------------------------------------

    def api_clusters(self, request: Request) -> Response:
        params = request.query_params
        unknown = set(params) - {"partition", "lineage_status", "verdict", "sort", "limit"}
        if unknown:
            raise HTTPException(422, f"unknown parameter(s): {', '.join(sorted(unknown))}")
        try:
            limit = int(params.get("limit", "500"))
            if not 1 <= limit <= 5000:
                raise ValueError("limit must be between 1 and 5000")
            listing = self.catalog.list_clusters(params.get("partition"), params.get("lineage_status"),
                                                 params.get("verdict"), params.get("sort", "risk"), limit)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return ApiResponse(listing)

    def api_cluster(self, request: Request) -> Response:
        view = self._cluster_view(self._cluster_or_404(request))
        view.pop("plots")
        return ApiResponse(view)

    def api_members(self, request: Request) -> Response:
        cluster = self._cluster_or_404(request)
        page = _page_number(request)
        try:
            size = int(request.query_params.get("page_size", str(MEMBERS_PER_PAGE)))
            return ApiResponse(self.catalog.members(cluster["cluster_key"], cluster["run_id"], page, size))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    def api_reviews(self, request: Request) -> Response:
        cluster = self._cluster_or_404(request)
        return ApiResponse({"cluster_key": cluster["cluster_key"],
                            "reviews": self.catalog.reviews(cluster["cluster_key"])})

    def api_events(self, request: Request) -> Response:
        tid = request.path_params["transaction_id"]
        found = self.catalog.transaction_events(tid) if valid_transaction_id(tid) else None
        if found is None:
            raise HTTPException(404, "no such transaction among the clustered ones")
        return ApiResponse(found)

    async def api_post_review(self, request: Request) -> Response:
        user, session = self.require(request, "viewer")
        self.check_csrf(request, session)
        if not user.can("reviewer"):
            raise HTTPException(403, "recording a verdict needs the reviewer role")
        key = request.path_params["cluster_key"]
        if not valid_cluster_key(key):
            raise HTTPException(404, "no such cluster in the published runs")
        body = await _json_body(request, required={"verdict"}, optional={"comment", "run_id"})
        verdict, comment, run_id = body["verdict"], body.get("comment", ""), body.get("run_id")
        if not isinstance(verdict, str) or verdict not in VERDICTS:
            raise HTTPException(422, f"verdict must be one of {', '.join(VERDICTS)}")
        if not isinstance(comment, str) or (run_id is not None and not isinstance(run_id, str)):
            raise HTTPException(422, "comment and run_id must be strings")
        from starlette.concurrency import run_in_threadpool

        row = await run_in_threadpool(self._record, key, verdict, comment, user, run_id)
        return ApiResponse(row, status_code=201)

    async def api_add_user(self, request: Request) -> Response:
        _, session = self.require(request, "admin")
        self.check_csrf(request, session)
        body = await _json_body(request, required={"name", "role", "password"}, optional=set())
        if not all(isinstance(body[k], str) for k in ("name", "role", "password")):
            raise HTTPException(422, "name, role and password must be strings")
        try:
            from starlette.concurrency import run_in_threadpool

            user = await run_in_threadpool(add_user, self.users.path, body["name"], body["role"], body["password"])
        except AuthFileError as exc:
            raise HTTPException(422, str(exc)) from exc
        return ApiResponse({"name": user.name, "role": user.role}, status_code=201)

    def api_users(self, request: Request) -> Response:
        return ApiResponse({"users": self.users.names() if self.users else [], "roles": list(ROLES)})

    def api_remove_user(self, request: Request) -> Response:
        user, session = self.require(request, "admin")
        self.check_csrf(request, session)
        name = request.path_params["name"]
        if not valid_username(name) or not remove_user(self.users.path, name):  # type: ignore[union-attr]
            raise HTTPException(404, "no such user")
        return Response(status_code=204)


class LoopbackOnly:
    """Without an auth file: refuse requests whose Host is not a loopback name (DNS rebinding)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if not is_loopback(name):
                await PlainTextResponse("this app serves loopback only without an auth file", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(lake: Lake, auth_file: str | Path | None = None, **options: Any) -> Starlette:
    return ReviewApp(lake, auth_file, **options).build()


# -- figures (plotly.js figure JSON, rendered in the browser by the app's own copy of plotly.js) ---------

def history_figure(history: list[dict[str, Any]]) -> dict[str, Any]:
    days = [_day(h["partition"]) for h in history]
    return {
        "data": [
            {"type": "bar", "name": "size", "x": days, "y": [h["size"] for h in history],
             "marker": {"color": "#9db4d3"}, "hovertemplate": "%{x}: %{y} transactions<extra></extra>"},
            {"type": "scatter", "mode": "lines+markers", "name": "fraud rate", "x": days, "yaxis": "y2",
             "y": [h["fraud_rate"] for h in history], "line": {"color": "#c0392b"},
             "hovertemplate": "%{x}: fraud rate %{y:.1%}<extra></extra>"},
            {"type": "scatter", "mode": "lines+markers", "name": "fraud rate, lower bound", "x": days,
             "yaxis": "y2", "y": [h["fraud_rate_lower"] for h in history], "line": {"color": "#e67e22", "dash": "dot"},
             "hovertemplate": "%{x}: at least %{y:.1%}<extra></extra>"},
        ],
        "layout": {"height": 280, "margin": {"l": 50, "r": 60, "t": 10, "b": 40}, "barmode": "group",
                   "xaxis": {"type": "category", "title": {"text": "daily run"}},
                   "yaxis": {"title": {"text": "members"}, "rangemode": "tozero"},
                   "yaxis2": {"title": {"text": "fraud rate"}, "overlaying": "y", "side": "right",
                              "tickformat": ".0%", "range": [0, 1.05]},
                   "legend": {"orientation": "h", "y": -0.3}},
    }


def map_figure(points: list[dict[str, Any]], highlight: str) -> dict[str, Any]:
    def trace(rows: list[dict[str, Any]], name: str, **style: Any) -> dict[str, Any]:
        return {"type": "scatter", "mode": "markers", "name": name, "x": [p["x"] for p in rows],
                "y": [p["y"] for p in rows], "customdata": [p["cluster_key"] for p in rows],
                "text": [f"{p['cluster_key']}: {p['size']} members, fraud rate ≥ {p['fraud_rate_lower']:.0%}"
                         for p in rows], "hovertemplate": "%{text}<extra></extra>", **style}

    sizes = [p["size"] for p in points] or [1]
    scale = 40.0 / math.sqrt(max(sizes))

    def marker_sizes(rows):
        return [max(6.0, scale * math.sqrt(p["size"])) for p in rows]

    others = [p for p in points if not p["flagged"] and p["cluster_key"] != highlight]
    flagged = [p for p in points if p["flagged"] and p["cluster_key"] != highlight]
    this = [p for p in points if p["cluster_key"] == highlight]
    return {
        "data": [
            trace(others, "other clusters", marker={"size": marker_sizes(others), "color": "#b8c4d6", "opacity": 0.7}),
            trace(flagged, "flagged", marker={"size": marker_sizes(flagged), "color": "#e67e22", "opacity": 0.8}),
            trace(this, "this cluster", marker={"size": marker_sizes(this), "color": "#c0392b",
                                                "line": {"width": 3, "color": "#111"}}),
        ],
        "layout": {"height": 320, "margin": {"l": 40, "r": 10, "t": 10, "b": 40}, "hovermode": "closest",
                   "xaxis": {"title": {"text": "centroid PC 1"}, "zeroline": False},
                   "yaxis": {"title": {"text": "centroid PC 2"}, "zeroline": False},
                   "legend": {"orientation": "h", "y": -0.3}},
    }


# -- small helpers -------------------------------------------------------------------------------

def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _same_origin(request: Request) -> None:
    """A cross-site form may not sign anyone in (login CSRF): an Origin, when sent, must be ours."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if re.sub(r"^https?://", "", origin) != host:
            raise HTTPException(403, "cross-origin sign-in refused")


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no backslashes) may follow a sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target \
            and re.fullmatch(r"[A-Za-z0-9/_.?=&%:+-]*", target):
        return target
    return "/"


def _page_number(request: Request) -> int:
    try:
        page = int(request.query_params.get("page", "1"))
    except ValueError as exc:
        raise HTTPException(422, "page must be a whole number") from exc
    if not 1 <= page <= 1_000_000:
        raise HTTPException(422, "page must be at least 1")
    return page


async def _json_body(request: Request, required: set[str], optional: set[str]) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(422, "the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    missing, unknown = required - set(body), set(body) - required - optional
    if missing or unknown:
        raise HTTPException(422, f"missing field(s): {', '.join(sorted(missing)) or '-'}; "
                                 f"unknown field(s): {', '.join(sorted(unknown)) or '-'}")
    return body


def _os_user() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "local"
    return name if valid_username(name) else "local"


def _pct(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{float(value):.{digits}%}"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value.tzinfo else value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (int, float)):
        return datetime.utcfromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return "–" if value is None else str(value)


def _day(partition: Any) -> str:
    text = str(partition or "")
    return text[3:] if text.startswith("dt=") else text
