"""The review app over HTTP, against a real server on 127.0.0.1: authentication, roles, CSRF, status
codes, injection and traversal, escaping, headers, concurrency, unreadable lakes and new runs.

The lake holds published behaviour-clustering results written in the jobs' formats by
synthetic/published_clusters.py (fast); the browser test (test_serve_browser.py) uses the real job.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

import pyarrow as pa
import pytest

from lakelens.infra.catalog import open_catalog
from lakelens.infra.contracts import REVIEWS_DIR
from lakelens.infra.reviews import Review, record_review
from lakelens.infra.storage import Lake
from lakelens.synthetic.published_clusters import write_published_clusters

PASSWORDS = {"root": ("admin", "root-password-1"), "ana": ("reviewer", "ana-password-1"),
             "bob": ("reviewer", "bob-password-1"), "vic": ("viewer", "vic-password-1")}


# -- a real server in a thread, and a raw HTTP client (paths are sent exactly as written) -------------

class Server:
    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="off",
                                                    server_header=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.body = status, body
        self.headers = {k.lower(): v for k, v in headers}
        self.cookies = [v for k, v in headers if k.lower() == "set-cookie"]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


def call(port: int, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
         host: str | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        data = body.encode() if isinstance(body, str) else body
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        reply = conn.getresponse()
        return Reply(reply.status, reply.getheaders(), reply.read())
    finally:
        conn.close()


class Client:
    """A signed-in browser-like client: its session cookie and the CSRF token its pages carry."""

    def __init__(self, port: int, name: str | None = None) -> None:
        self.port, self.cookie, self.csrf = port, "", ""
        if name:
            reply = self.post_form("/login", {"username": name, "password": PASSWORDS[name][1], "next": "/"})
            assert reply.status == 303, reply.text
            self.cookie = _cookie_value(reply)
            page = self.get("/")
            self.csrf = csrf_of(page.text)

    def _headers(self, extra: dict | None) -> dict:
        return {**({"Cookie": f"lakelens_session={self.cookie}"} if self.cookie else {}), **(extra or {})}

    def get(self, path: str, headers: dict | None = None) -> Reply:
        return call(self.port, "GET", path, headers=self._headers(headers))

    def post_json(self, path: str, payload, csrf: str | None = "mine", headers: dict | None = None) -> Reply:
        extra = {"Content-Type": "application/json", **(headers or {})}
        if csrf == "mine":
            extra["X-CSRF-Token"] = self.csrf
        elif csrf is not None:
            extra["X-CSRF-Token"] = csrf
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        return call(self.port, "POST", path, body, self._headers(extra))

    def post_form(self, path: str, fields: dict) -> Reply:
        return call(self.port, "POST", path, urlencode(fields),
                    self._headers({"Content-Type": "application/x-www-form-urlencoded"}))


def _cookie_value(reply: Reply) -> str:
    for header in reply.cookies:
        match = re.match(r"lakelens_session=([^;]*)", header)
        if match:
            return match.group(1)
    raise AssertionError(f"no session cookie in {reply.cookies}")


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]*)">', html)
    assert match, "the page carries no CSRF meta tag"
    return match.group(1)


# -- fixtures ------------------------------------------------------------------------------------

@contextmanager
def cheap_hashes():
    """Argon2id with a small cost for the test users (the cost is stored in each hash; the app's default is
    the library's 64 MiB, t=3): sign-ins in these tests then take milliseconds, not a tenth of a second."""
    from argon2 import PasswordHasher

    from lakelens.serve import auth

    default, auth._hasher = auth._hasher, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    try:
        yield
    finally:
        auth._hasher = default


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lakelens.serve.auth import add_user

    root = tmp_path_factory.mktemp("serve")
    lake = Lake(root / "lake")
    made = write_published_clusters(lake, transactions_per_day=300, days=3, clusters=9, runs=2, seed=3)
    auth = root / "users.json"
    with cheap_hashes():
        for name, (role, password) in PASSWORDS.items():
            add_user(auth, name, role, password)
    return lake, auth, made


@contextmanager
def serving(lake: Lake, auth: Path | None, **options):
    from lakelens.serve.app import create_app

    options.setdefault("recheck_s", 0.2)
    with Server(create_app(lake, auth, **options)) as server:
        yield server


@pytest.fixture(scope="module")
def server(world):
    lake, auth, _ = world
    with serving(lake, auth) as running:
        yield running


@pytest.fixture(scope="module")
def token(world):
    from lakelens.serve.auth import issue_token

    _, auth, _ = world
    return {name: issue_token(auth, name) for name in ("ana", "bob", "vic")}


def review_files(lake: Lake) -> list[str]:
    return [e.path for e in lake.list_files(REVIEWS_DIR, suffix=".parquet")]


def all_files(lake: Lake) -> list[str]:
    return [e.path for e in lake.list_files("", suffix="")]


def flagged_key(world) -> str:
    return world[2]["flagged"][0]


# -- authentication ------------------------------------------------------------------------------

def test_without_authentication_pages_redirect_to_login_and_the_api_answers_401(world, server):
    key = flagged_key(world)
    before = review_files(world[0])
    for path in ("/", f"/clusters/{key}", f"/clusters/{key}/members?page=2", "/transactions/t0002-1"):
        reply = call(server.port, "GET", path)
        assert reply.status == 303 and reply.headers["location"].startswith("/login?next="), (path, reply.status)
    for path in ("/api/clusters", f"/api/clusters/{key}", f"/api/clusters/{key}/members?page=1",
                 "/api/transactions/t0002-1/events"):
        assert call(server.port, "GET", path).status == 401, path
    reply = call(server.port, "POST", f"/api/clusters/{key}/reviews", json.dumps({"verdict": "fraud"}),
                 {"Content-Type": "application/json"})
    assert reply.status == 401 and reply.json() == {"error": "sign in first"}
    assert call(server.port, "GET", "/api/clusters", headers={"Authorization": "Bearer ll_00000000_" + "x" * 40}
                ).status == 401
    assert review_files(world[0]) == before


def test_login_sets_a_strict_httponly_cookie_and_the_page_carries_the_csrf_token(server):
    reply = Client(server.port).post_form("/login", {"username": "ana", "password": PASSWORDS["ana"][1],
                                                     "next": "/clusters/ck-0000000000"})
    assert reply.status == 303 and reply.headers["location"] == "/clusters/ck-0000000000"
    cookie = next(c for c in reply.cookies if c.startswith("lakelens_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=strict" in flags and "secure" not in flags  # plain http here
    client = Client(server.port, "ana")
    assert len(client.csrf) >= 32


def test_a_redirect_after_login_stays_on_this_site(server):
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        reply = Client(server.port).post_form("/login", {"username": "ana", "password": PASSWORDS["ana"][1],
                                                         "next": target})
        assert reply.status == 303 and reply.headers["location"] == "/", target


def test_a_failed_login_does_not_say_whether_the_user_exists(server):
    client = Client(server.port)
    wrong = client.post_form("/login", {"username": "vic", "password": "not-her-password"})
    missing = client.post_form("/login", {"username": "nobody-here", "password": "not-her-password"})
    assert wrong.status == missing.status == 401
    assert wrong.text == missing.text and "Invalid user name or password" in wrong.text
    assert not wrong.cookies and not missing.cookies


def test_repeated_failed_logins_are_throttled_for_existing_and_unknown_names(world):
    from lakelens.serve.auth import LoginThrottle

    lake, auth, _ = world
    with serving(lake, auth, throttle=LoginThrottle(free=3, base_s=30.0)) as running:
        client = Client(running.port)
        for name in ("ana", "ghost"):
            statuses = [client.post_form("/login", {"username": name, "password": "wrong-password"}).status
                        for _ in range(4)]
            assert statuses == [401, 401, 401, 429], (name, statuses)
        # the right password does not get through while the name is throttled, and says nothing more
        right = client.post_form("/login", {"username": "ana", "password": PASSWORDS["ana"][1]})
        assert right.status == 429 and not right.cookies and "Too many failed sign-ins" in right.text
        # another user from the same address is not locked out by these few failures
        assert client.post_form("/login", {"username": "bob", "password": PASSWORDS["bob"][1]}).status == 303


def test_sessions_expire_when_idle(world):
    lake, auth, _ = world
    with serving(lake, auth, session_idle_s=0.6) as running:
        client = Client(running.port, "ana")
        assert client.get("/api/clusters").status == 200
        time.sleep(1.0)
        assert client.get("/api/clusters").status == 401
        assert client.get("/").status == 303


def test_logout_ends_the_session(server):
    client = Client(server.port, "ana")
    assert client.post_form("/logout", {"csrf_token": "wrong"}).status == 403
    assert client.post_form("/logout", {"csrf_token": client.csrf}).status == 303
    assert client.get("/api/clusters").status == 401


def test_cookies_are_secure_when_served_over_tls(world):
    """The ASGI app called directly with an https scope (what uvicorn passes when it terminates TLS)."""
    import asyncio

    from lakelens.serve.app import create_app

    lake, auth, _ = world
    app = create_app(lake, auth)
    body = urlencode({"username": "ana", "password": PASSWORDS["ana"][1]}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "https",
             "path": "/login", "raw_path": b"/login", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"review.example"), (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("review.example", 443)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = [(k.decode().lower(), v.decode()) for k, v in start["headers"]]
    cookie = next(v for k, v in headers if k == "set-cookie")
    assert start["status"] == 303 and "secure" in cookie.lower() and "httponly" in cookie.lower()
    assert dict(headers)["strict-transport-security"].startswith("max-age=")


# -- roles, CSRF and status codes -------------------------------------------------------------------

def test_a_reviewer_records_a_verdict_with_the_csrf_header_and_gets_201(world, server):
    lake = world[0]
    key = flagged_key(world)
    client = Client(server.port, "ana")
    before = len(review_files(lake))
    reply = client.post_json(f"/api/clusters/{key}/reviews", {"verdict": "needs_more_info", "comment": "look again"})
    assert reply.status == 201, reply.text
    row = reply.json()
    assert row["cluster_key"] == key and row["reviewer"] == "ana" and row["verdict"] == "needs_more_info"
    assert len(review_files(lake)) == before + 1
    reviews = client.get(f"/api/clusters/{key}/reviews").json()["reviews"]
    assert reviews[0]["review_id"] == row["review_id"]


def test_state_changing_requests_with_the_cookie_need_the_csrf_token(world, server):
    lake = world[0]
    key = flagged_key(world)
    client = Client(server.port, "ana")
    before = review_files(lake)
    assert client.post_json(f"/api/clusters/{key}/reviews", {"verdict": "fraud"}, csrf=None).status == 403
    assert client.post_json(f"/api/clusters/{key}/reviews", {"verdict": "fraud"}, csrf="x" * 43).status == 403
    other = Client(server.port, "bob")  # another session's token is not this session's
    assert client.post_json(f"/api/clusters/{key}/reviews", {"verdict": "fraud"}, csrf=other.csrf).status == 403
    assert client.post_form(f"/clusters/{key}/reviews", {"verdict": "fraud"}).status == 403
    assert review_files(lake) == before
    # the form posts the token as a hidden field
    reply = client.post_form(f"/clusters/{key}/reviews", {"verdict": "fraud", "comment": "from the form",
                                                           "csrf_token": client.csrf})
    assert reply.status == 303 and reply.headers["location"] == f"/clusters/{key}#reviews"
    assert len(review_files(lake)) == len(before) + 1


def test_bearer_tokens_need_no_csrf_token(world, server, token):
    key = flagged_key(world)
    reply = call(server.port, "POST", f"/api/clusters/{key}/reviews",
                 json.dumps({"verdict": "legit", "comment": "scripted"}),
                 {"Authorization": f"Bearer {token['bob']}", "Content-Type": "application/json"})
    assert reply.status == 201 and reply.json()["reviewer"] == "bob"
    listing = call(server.port, "GET", "/api/clusters", headers={"Authorization": f"Bearer {token['vic']}"})
    assert listing.status == 200 and listing.json()["clusters"]


def test_a_viewer_reads_but_sees_no_verdict_form_and_its_post_gets_403(world, server, token):
    lake = world[0]
    key = flagged_key(world)
    viewer = Client(server.port, "vic")
    page = viewer.get(f"/clusters/{key}")
    assert page.status == 200 and 'id="verdict-form"' not in page.text and "reviewer role" in page.text
    assert 'id="verdict-form"' in Client(server.port, "ana").get(f"/clusters/{key}").text
    before = review_files(lake)
    assert viewer.post_json(f"/api/clusters/{key}/reviews", {"verdict": "fraud"}).status == 403
    assert viewer.post_form(f"/clusters/{key}/reviews", {"verdict": "fraud", "csrf_token": viewer.csrf}).status == 403
    assert call(server.port, "POST", f"/api/clusters/{key}/reviews", json.dumps({"verdict": "fraud"}),
                {"Authorization": f"Bearer {token['vic']}", "Content-Type": "application/json"}).status == 403
    assert review_files(lake) == before


def test_only_an_admin_manages_users(world, server, token):
    from lakelens.serve.auth import UserStore

    _, auth, _ = world
    for name in ("ana", "vic"):
        assert Client(server.port, name).get("/api/users").status == 403
        assert Client(server.port, name).get("/admin/users").status == 403
    admin = Client(server.port, "root")
    assert {u["name"] for u in admin.get("/api/users").json()["users"]} >= {"ana", "vic", "root"}
    assert admin.post_json("/api/users", {"name": "carol", "role": "reviewer", "password": "short"}).status == 422
    assert admin.post_json("/api/users", {"name": "carol", "role": "boss", "password": "long-enough-1"}).status == 422
    assert admin.post_json("/api/users", {"name": "carol", "role": "viewer", "password": "long-enough-1"},
                           csrf=None).status == 403
    assert admin.post_json("/api/users", {"name": "carol", "role": "viewer", "password": "long-enough-1"}).status == 201
    assert UserStore(auth).user("carol").role == "viewer"
    carol = Client(server.port)
    carol.cookie = _cookie_value(carol.post_form("/login", {"username": "carol", "password": "long-enough-1"}))
    assert carol.get("/api/clusters").status == 200
    removed = call(server.port, "DELETE", "/api/users/carol",
                   headers={"Cookie": f"lakelens_session={admin.cookie}", "X-CSRF-Token": admin.csrf})
    assert removed.status == 204
    time.sleep(1.1)  # the user store re-reads the file at most once a second
    assert carol.get("/api/clusters").status == 401  # a removed user's session ends


def test_unknown_keys_are_404_and_invalid_bodies_422(world, server):
    lake = world[0]
    key = flagged_key(world)
    client = Client(server.port, "ana")
    before = review_files(lake)
    assert client.get("/api/clusters/ck-0123456789").status == 404
    assert client.get("/clusters/ck-0123456789").status == 404
    assert client.get("/api/clusters/ck-0123456789/members?page=1").status == 404
    assert client.get("/api/transactions/t9999-1/events").status == 404
    assert client.post_json("/api/clusters/ck-0123456789/reviews", {"verdict": "fraud"}).status == 404
    for body in ("not json", "[1, 2]", json.dumps({"verdict": "maybe"}), json.dumps({"comment": "no verdict"}),
                 json.dumps({"verdict": "fraud", "comment": 7}), json.dumps({"verdict": "fraud", "extra": 1}),
                 json.dumps({"verdict": "fraud", "comment": "x" * 5000}), b"\xff\xfe"):
        reply = client.post_json(f"/api/clusters/{key}/reviews", body)
        assert reply.status == 422, (body, reply.status, reply.text)
    for query in ("page=0", "page=x", "page=-3"):
        assert client.get(f"/api/clusters/{key}/members?{query}").status == 422, query
    for query in ("sort=drop", "partition=yesterday", "verdict=maybe", "lineage_status=x", "colour=red", "limit=0"):
        assert client.get(f"/api/clusters?{query}").status == 422, query
    assert review_files(lake) == before


# -- injection, traversal, escaping -------------------------------------------------------------------

ATTACKS = ["ck-0000000000'%20OR%20'1'='1", "ck-0000000000%27%20OR%20%271%27%3D%271", "%27%3B%20DROP%20TABLE%20runs%3B--",
           "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2e%2e", "..", "%2Fetc%2Fpasswd",
           "%252e%252e%252f", "ck-0000000000%00", "ck-%2e%2e%2fruns", "t0000-1%27--", "t0000-1%20UNION%20SELECT%201"]


def test_injection_and_traversal_attempts_get_4xx_and_write_nothing(world, server, token):
    lake = world[0]
    client = Client(server.port, "ana")
    before = all_files(lake)
    auth = {"Authorization": f"Bearer {token['ana']}"}
    for attack in ATTACKS:
        for path in (f"/api/clusters/{attack}", f"/api/clusters/{attack}/members?page=1",
                     f"/api/transactions/{attack}/events", f"/clusters/{attack}", f"/transactions/{attack}",
                     f"/clusters/{attack}/members"):
            reply = client.get(path)
            assert 400 <= reply.status < 500, (path, reply.status)
        for path in (f"/api/clusters/{attack}/reviews", f"/clusters/{attack}/reviews"):
            reply = call(server.port, "POST", path, json.dumps({"verdict": "fraud"}),
                         {**auth, "Content-Type": "application/json"})
            assert 400 <= reply.status < 500, (path, reply.status)
    for path in ("/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static//etc/passwd",
                 "/static/%2Fetc%2Fpasswd", "/static/..%2f..%2fapp.py", "/static/vendor/../../app.py",
                 "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"):
        reply = client.get(path)
        assert 400 <= reply.status < 500 and b"root:" not in reply.body and b"import" not in reply.body, (path,
                                                                                                          reply.status)
    for query in ("partition=dt%3D2026-01-03%27%20OR%20%271%27%3D%271", "sort=risk%3B%20DROP%20TABLE%20runs",
                  "verdict=fraud%27--", "lineage_status=new%27%20OR%201%3D1--"):
        assert client.get(f"/api/clusters?{query}").status == 422, query
    assert all_files(lake) == before
    # and the catalog still answers as before
    assert client.get("/api/clusters").status == 200


def test_stored_comments_and_reviewer_names_are_escaped_everywhere(world, server):
    lake = world[0]
    key = world[2]["flagged"][-1]
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    record_review(lake, Review(key, "fraud", '<script>alert("name")</script>', payload))
    client = Client(server.port, "ana")
    assert client.post_json(f"/api/clusters/{key}/reviews", {"verdict": "legit", "comment": payload}).status == 201
    time.sleep(0.3)
    for path in (f"/clusters/{key}", "/", f"/?verdict=legit"):
        html = client.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html, path
    html = client.get(f"/clusters/{key}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html and "&lt;script&gt;alert(&#34;name&#34;)" in html
    # only the app's own scripts are on the page, and no inline one
    assert all('src="/static/' in tag or 'type="application/json"' in tag for tag in re.findall(r"<script\b[^>]*>", html))
    reply = client.get(f"/api/clusters/{key}/reviews")
    assert reply.headers["content-type"].startswith("application/json")
    assert any(r["comment"] == payload for r in reply.json()["reviews"])  # stored as written, escaped when shown


def test_every_response_carries_the_security_headers(world, server):
    client = Client(server.port, "ana")
    key = flagged_key(world)
    for path in ("/login", "/", f"/clusters/{key}", "/api/clusters", "/static/app.css", "/clusters/ck-0123456789",
                 "/api/nothing"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        script_src = re.search(r"script-src ([^;]*)", csp).group(1)
        assert script_src.strip() == "'self'", (path, csp)
        assert "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert "server" not in headers, path


def test_plot_scripts_and_styles_are_served_by_the_app(world, server):
    client = Client(server.port, "ana")
    html = client.get(f"/clusters/{flagged_key(world)}").text
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    plotly = client.get("/static/vendor/plotly.min.js")
    assert plotly.status == 200 and len(plotly.body) > 1_000_000 and b"plotly.js" in plotly.body[:400]
    assert "javascript" in plotly.headers["content-type"]


# -- concurrency -----------------------------------------------------------------------------------------

def test_fifty_concurrent_verdicts_are_fifty_rows(world, server, token):
    lake = world[0]
    key = world[2]["flagged"][1]
    reviewers = [Client(server.port, "ana"), Client(server.port, "bob")]
    before = open_catalog(lake).execute("SELECT count(*) FROM cluster_reviews WHERE cluster_key = ?",
                                        [key]).fetchone()[0]
    start = threading.Barrier(10)

    def post(i: int) -> int:
        if i < 10:
            start.wait(timeout=30)  # the first ten leave at the same moment
        client = reviewers[i % 2]
        return client.post_json(f"/api/clusters/{key}/reviews",
                                {"verdict": ("fraud", "legit")[i % 2], "comment": f"post {i}"}).status

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(post, range(50)))
    assert statuses == [201] * 50
    con = open_catalog(lake)
    rows = con.execute("SELECT reviewer, comment FROM cluster_reviews WHERE cluster_key = ?", [key]).fetchall()
    assert len(rows) == before + 50
    assert {c for _, c in rows} >= {f"post {i}" for i in range(50)}
    assert {r for r, c in rows if c.startswith("post ")} == {"ana", "bob"}


# -- the lake: new runs, half-written runs, unreadable lakes ------------------------------------------------

def test_a_new_run_shows_without_a_restart_and_a_half_written_one_never(tmp_path):
    from lakelens.operators.cluster_tables import CLUSTERS_SCHEMA

    lake = Lake(tmp_path / "lake")
    write_published_clusters(lake, transactions_per_day=120, days=2, clusters=6, runs=1, seed=5)
    # a crashed attempt: tables written, no manifest
    ghost = {name: None for name in CLUSTERS_SCHEMA.names}
    ghost.update(run_id="behavior-clusters-dt2026-01-09-deadbeef0000", cluster_key="ck-feedfacefe", size=99,
                 flagged=True, fraud_rate_lower=0.99, lineage_status="new")
    lake.write_table("runs/behavior-clusters/dt=2026-01-09/behavior-clusters-dt2026-01-09-deadbeef0000/x/tables/"
                     "clusters/part-00000.parquet", pa.Table.from_pylist([ghost], schema=CLUSTERS_SCHEMA))
    auth = tmp_path / "users.json"
    from lakelens.serve.auth import add_user

    add_user(auth, "ana", "reviewer", PASSWORDS["ana"][1])
    with serving(lake, auth) as running:
        client = Client(running.port, "ana")
        first = client.get("/api/clusters").json()
        assert first["partitions"] == ["dt=2026-01-02"]
        assert client.get("/api/clusters/ck-feedfacefe").status == 404
        assert "ck-feedfacefe" not in client.get("/").text
        write_published_clusters(lake, transactions_per_day=120, days=3, clusters=6, runs=1, seed=5)
        deadline = time.monotonic() + 20
        while client.get("/api/clusters").json()["partition"] != "dt=2026-01-03":
            assert time.monotonic() < deadline, "the new run never showed"
            time.sleep(0.2)
        assert "2026-01-03" in client.get("/").text


def test_an_unreadable_lake_gives_a_page_that_says_so_never_an_error(tmp_path, world):
    _, auth, _ = world
    missing = Lake(tmp_path / "no-such-lake")
    with serving(missing, auth) as running:
        client = Client(running.port, "ana")
        page = client.get("/")
        assert page.status == 503 and "cannot be read" in page.text and "Traceback" not in page.text
        assert client.get("/api/clusters").status == 503
    lake = Lake(tmp_path / "lake")
    write_published_clusters(lake, transactions_per_day=100, days=2, clusters=5, runs=1, seed=6)
    with serving(lake, auth) as running:
        client = Client(running.port, "ana")
        key = client.get("/api/clusters").json()["clusters"][0]["cluster_key"]
        shutil.move(tmp_path / "lake", tmp_path / "moved")  # the lake goes away under a running app
        time.sleep(0.3)
        for path in ("/", f"/clusters/{key}", f"/clusters/{key}/members"):
            reply = client.get(path)
            assert reply.status in (200, 503) and "Traceback" not in reply.text, (path, reply.status)
        assert client.get(f"/clusters/{key}").status == 503  # its rules and history are read from the lake
        shutil.move(tmp_path / "moved", tmp_path / "lake")  # and comes back
        deadline = time.monotonic() + 20
        while client.get(f"/clusters/{key}").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)


# -- pages and API content ------------------------------------------------------------------------------

def test_the_cluster_list_filters_and_sorts(world, server):
    client = Client(server.port, "ana")
    listing = client.get("/api/clusters").json()
    assert listing["partition"] == "dt=2026-01-03" and listing["partitions"] == ["dt=2026-01-03", "dt=2026-01-02"]
    risks = [c["fraud_rate_lower"] for c in listing["clusters"]]
    assert risks == sorted(risks, reverse=True) and set(c["cluster_key"] for c in listing["clusters"]) == \
        set(world[2]["flagged"])
    sizes = [c["size"] for c in client.get("/api/clusters?sort=size").json()["clusters"]]
    assert sizes == sorted(sizes, reverse=True)
    older = client.get("/api/clusters?partition=dt%3D2026-01-02").json()
    # the first run's clusters are all new: the catalog's emerging_clusters view lists them as "needs a look"
    assert older["emerging"] and all(e["partition"] == "dt=2026-01-02" for e in older["emerging"])
    assert "Needs a look" in client.get("/?partition=dt%3D2026-01-02").text
    assert older["partition"] == "dt=2026-01-02" and all(c["lineage_status"] == "new" for c in older["clusters"])
    assert client.get("/api/clusters?partition=dt%3D2026-01-02&lineage_status=growing").json()["clusters"] == []
    none = client.get("/api/clusters?verdict=none").json()["clusters"]
    assert all(c["latest_verdict"] is None for c in none)
    trend = client.get("/api/clusters?sort=trend").json()["clusters"]
    values = [c["trend"] for c in trend]
    assert values == sorted(values, key=lambda v: float("inf") if v is None else v, reverse=True)


def test_a_cluster_has_rules_history_map_members_and_a_member_its_click_stream(world, server):
    client = Client(server.port, "ana")
    key = flagged_key(world)
    cluster = client.get(f"/api/clusters/{key}").json()
    assert cluster["cluster"]["cluster_key"] == key and cluster["cluster"]["narrative"]
    assert cluster["rules"] and all(r["sql_predicate"] and 0 <= r["precision"] <= 1 for r in cluster["rules"])
    assert [h["partition"] for h in cluster["history"]] == ["dt=2026-01-02", "dt=2026-01-03"]
    assert key in {p["cluster_key"] for p in cluster["map"]} and len(cluster["map"]) == 9
    first = client.get(f"/api/clusters/{key}/members?page=1&page_size=10").json()
    second = client.get(f"/api/clusters/{key}/members?page=2&page_size=10").json()
    assert first["total"] == cluster["cluster"]["size"] and len(first["members"]) == 10
    assert not {m["transaction_id"] for m in first["members"]} & {m["transaction_id"] for m in second["members"]}
    assert all(m["transaction"]["transaction_id"] == m["transaction_id"] for m in first["members"])
    member = first["members"][0]["transaction_id"]
    events = client.get(f"/api/transactions/{member}/events").json()
    assert events["cluster_key"] == key and events["events"]
    befores = [e["seconds_before_transaction"] for e in events["events"]]
    assert befores == sorted(befores, reverse=True)  # time order
    assert any(e["attention"] > 0 for e in events["events"])
    assert events["transaction"]["transaction_id"] == member and "account_age_days" in events["transaction"]
    page = client.get(f"/transactions/{member}").text
    assert 'class="event attended' in page and "attention" in page
    html = client.get(f"/clusters/{key}").text
    assert 'id="history-figure"' in html and 'id="map-figure"' in html and "sql" in html
    members_page = client.get(f"/clusters/{key}/members?page=2").text
    assert 'rel="prev"' in members_page


def test_local_mode_without_an_auth_file_serves_loopback_names_only(world):
    lake = world[0]
    key = flagged_key(world)
    with serving(lake, None, local_user="analyst") as running:
        assert call(running.port, "GET", "/api/clusters").status == 200
        assert call(running.port, "GET", "/", host="evil.example:80").status == 403  # DNS rebinding
        page = call(running.port, "GET", "/")
        assert page.status == 200 and "analyst" in page.text
        cookie, csrf = _cookie_value(page), csrf_of(page.text)
        bare = call(running.port, "POST", f"/api/clusters/{key}/reviews", json.dumps({"verdict": "fraud"}),
                    {"Content-Type": "application/json"})
        assert bare.status == 401
        ok = call(running.port, "POST", f"/api/clusters/{key}/reviews", json.dumps({"verdict": "fraud"}),
                  {"Content-Type": "application/json", "Cookie": f"lakelens_session={cookie}", "X-CSRF-Token": csrf})
        assert ok.status == 201 and ok.json()["reviewer"] == "analyst"


# -- the CLI --------------------------------------------------------------------------------------------

def run_cli(argv: list[str], stdin: str = "", monkeypatch=None, capsys=None) -> int:
    import io
    import sys

    from lakelens.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return stop.value.code


def test_users_add_token_remove_and_serve_refusals(tmp_path, monkeypatch, capsys):
    from lakelens.serve.auth import UserStore

    auth = tmp_path / "users.json"
    assert run_cli(["users", "add", "--auth", str(auth), "--name", "ana", "--role", "reviewer"],
                   "a long passphrase\n", monkeypatch) == 0
    text = auth.read_text()
    assert "a long passphrase" not in text and "$argon2id$" in text and oct(auth.stat().st_mode)[-3:] == "600"
    assert UserStore(auth).authenticate("ana", "a long passphrase").role == "reviewer"
    assert UserStore(auth).authenticate("ana", "a long passphrase\n") is None
    assert run_cli(["users", "add", "--auth", str(auth), "--name", "bo b", "--role", "viewer"], "passphrase-1\n",
                   monkeypatch) == 2
    assert run_cli(["users", "add", "--auth", str(auth), "--name", "bob", "--role", "viewer"], "short\n",
                   monkeypatch) == 2
    assert run_cli(["users", "add", "--auth", str(auth), "--name", "bob", "--role", "king"], "passphrase-1\n",
                   monkeypatch) == 64
    capsys.readouterr()
    assert run_cli(["users", "token", "--auth", str(auth), "--name", "ana"], "", monkeypatch) == 0
    issued = capsys.readouterr().out.strip()
    assert UserStore(auth).from_token(issued).name == "ana" and issued not in auth.read_text()
    assert run_cli(["users", "token", "--auth", str(auth), "--name", "nobody"], "", monkeypatch) == 2
    assert run_cli(["users", "remove", "--auth", str(auth), "--name", "ana"], "", monkeypatch) == 0
    assert UserStore(auth).from_token(issued) is None
    assert run_cli(["users", "remove", "--auth", str(auth), "--name", "ana"], "", monkeypatch) == 2
    lake = str(tmp_path / "lake")
    assert run_cli(["serve", "--lake", lake, "--host", "0.0.0.0"], "", monkeypatch) == 2
    assert "without --auth" in capsys.readouterr().err
    assert run_cli(["serve", "--lake", lake, "--host", "10.1.2.3", "--auth", str(tmp_path / "none.json")], "",
                   monkeypatch) == 2
    assert run_cli(["serve", "--lake", lake, "--port", "nope"], "", monkeypatch) == 64
