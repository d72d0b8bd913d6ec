"""Users, passwords, API tokens, sessions and login throttling for `lakelens serve`.

The auth file is JSON, written atomically with mode 0600 under an exclusive lock:

    {"version": 1, "users": {"ana": {"role": "reviewer", "password_hash": "$argon2id$...",
                                     "created_at": "...", "tokens": [{"id": "...", "sha256": "...", ...}]}}}

Passwords are kept only as salted argon2id hashes (slow on purpose). An API token is shown once,
when it is issued: `ll_<id>_<secret>`; the file keeps the SHA-256 of the whole token (a token is
32 random bytes, so a fast hash is enough) and the server compares in constant time. The server
re-reads the file when it changes, so `lakelens users add/remove/token` take effect while it runs;
a removed user's sessions and tokens stop working at their next request.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("viewer", "reviewer", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # argon2id with the library's current defaults (RFC 9106 low-memory profile)
# verified against when the user does not exist, so a miss costs as much as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AuthFileError(ValueError):
    """The auth file or a request to change it is wrong (bad name, role, password or file)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def valid_username(name: str) -> bool:
    return bool(USERNAME.fullmatch(name or ""))


# -- the file (CLI and server) -------------------------------------------------------------------

def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"version": 1, "users": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuthFileError(f"{path}: not a readable lakelens auth file: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
        raise AuthFileError(f"{path}: not a lakelens auth file (no 'users' object)")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the file under an exclusive lock; the yielded dict is written back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            data = _read(path)
            yield data
            _write(path, data)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_user(path: str | os.PathLike[str], name: str, role: str, password: str) -> User:
    """Create a user, or replace the password and role of an existing one."""
    if not valid_username(name):
        raise AuthFileError(f"user name {name!r}: use 1-64 letters, digits and . _ @ -, starting with a letter or digit")
    if role not in ROLES:
        raise AuthFileError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if len(password) < MIN_PASSWORD:
        raise AuthFileError(f"a password needs at least {MIN_PASSWORD} characters")
    hashed = _hasher.hash(password)
    with _locked(Path(path)) as data:
        previous = data["users"].get(name, {})
        data["users"][name] = {"role": role, "password_hash": hashed, "tokens": previous.get("tokens", []),
                               "created_at": previous.get("created_at", _now())}
    return User(name, role)


def remove_user(path: str | os.PathLike[str], name: str) -> bool:
    """Delete a user with its tokens; False when there was no such user."""
    with _locked(Path(path)) as data:
        return data["users"].pop(name, None) is not None


def issue_token(path: str | os.PathLike[str], name: str) -> str:
    """A new API token for an existing user; the only time the token itself is seen."""
    token_id = secrets.token_hex(4)
    token = f"ll_{token_id}_{secrets.token_urlsafe(32)}"
    with _locked(Path(path)) as data:
        user = data["users"].get(name)
        if user is None:
            raise LookupError(f"no user {name!r} in {path}")
        user.setdefault("tokens", []).append({"id": token_id, "sha256": _token_digest(token), "created_at": _now()})
    return token


def list_users(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    data = _read(Path(path))
    return [{"name": n, "role": u["role"], "tokens": len(u.get("tokens", [])), "created_at": u.get("created_at")}
            for n, u in sorted(data["users"].items())]


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the server's view of the file ----------------------------------------------------------------

class UserStore:
    """Read-only, reloaded when the file changes (checked at most once a second)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise AuthFileError(f"auth file {self.path} does not exist; create it with `lakelens users add`")
        self._data = _read(self.path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple:
        try:
            info = self.path.stat()
            return (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            return ()

    def _users(self, fresh: bool = False) -> dict[str, Any]:
        """The users; the file is looked at again after a second, or now when `fresh` (after a miss)."""
        if fresh or time.monotonic() - self._checked > 1.0:
            with self._lock:
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    try:
                        self._data, self._stamp = _read(self.path), stamp
                    except AuthFileError:
                        pass  # a broken edit: keep the last good file
                self._checked = time.monotonic()
        return self._data["users"]

    def user(self, name: str) -> User | None:
        found = self._users().get(name) or self._users(fresh=True).get(name)
        return User(name, found["role"]) if found and found.get("role") in RANK else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password matches; always spends one argon2 verification."""
        found = (self._users().get(name) or self._users(fresh=True).get(name)) if valid_username(name) else None
        hashed = found["password_hash"] if found else _DUMMY_HASH
        try:
            ok = _hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        return User(name, found["role"]) if ok and found and found.get("role") in RANK else None

    def from_token(self, token: str) -> User | None:
        match = re.fullmatch(r"ll_([0-9a-f]{8})_[A-Za-z0-9_-]{20,100}", token or "")
        if not match:
            return None
        digest = _token_digest(token)
        for fresh in (False, True):
            for name, user in self._users(fresh).items():
                for stored in user.get("tokens", []):
                    if stored.get("id") == match.group(1) and hmac.compare_digest(stored.get("sha256", ""), digest):
                        return User(name, user["role"]) if user.get("role") in RANK else None
        return None

    def names(self) -> list[dict[str, Any]]:
        return [{"name": n, "role": u["role"], "tokens": len(u.get("tokens", []))}
                for n, u in sorted(self._users().items())]


# -- sessions and throttling (in memory: a restart logs everyone out) ----------------------------

@dataclass
class Session:
    sid: str
    user_name: str
    csrf: str
    created: float
    seen: float


class Sessions:
    """Server-side sessions: the cookie holds only a random id. Idle and absolute expiry."""

    def __init__(self, idle_s: float = 1800.0, absolute_s: float = 12 * 3600.0) -> None:
        self.idle_s, self.absolute_s = idle_s, absolute_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user_name: str) -> Session:
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), user_name, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._expire(now)
            self._by_id[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if now - session.seen > self.idle_s or now - session.created > self.absolute_s:
                del self._by_id[sid]
                return None
            session.seen = now
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def _expire(self, now: float) -> None:
        dead = [k for k, s in self._by_id.items()
                if now - s.seen > self.idle_s or now - s.created > self.absolute_s]
        for key in dead:
            del self._by_id[key]


class LoginThrottle:
    """After `free` failures for a user name (existing or not) or a client address within `window_s`,
    each further attempt waits: `base_s` doubling per failure, at most `max_s`. Success clears the name."""

    def __init__(self, free: int = 5, window_s: float = 900.0, base_s: float = 2.0, max_s: float = 900.0) -> None:
        self.free, self.window_s, self.base_s, self.max_s = free, window_s, base_s, max_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, name: str, client: str) -> list[str]:
        return [f"user:{name.lower()[:64]}", f"addr:{client}"]

    def retry_after(self, name: str, client: str) -> float:
        """Seconds until this name and address may try again (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in self._keys(name, client):
                times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
                self._failures[key] = times
                # an address gets more room than a name: several people may share one
                free = self.free if key.startswith("user:") else self.free * 4
                if len(times) >= free:
                    delay = min(self.base_s * 2 ** (len(times) - free), self.max_s)
                    wait = max(wait, times[-1] + delay - now)
        return max(wait, 0.0)

    def failed(self, name: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in self._keys(name, client):
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 100_000:  # bound memory under a flood of made-up names
                self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] < self.window_s}

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{name.lower()[:64]}", None)
