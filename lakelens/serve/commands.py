"""`lakelens serve` and `lakelens users`: registered into the CLI by one call (`add_commands`).

Exit codes as in lakelens/cli.py: 0 ok, 2 bad input or config (a non-loopback host without an auth
file, a missing auth file, a bad user name, role or password, an unknown user), 64 usage.
Heavy imports (starlette, uvicorn, argon2) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Callable

from lakelens.infra.errors import InputError


def add_commands(sub, add: Callable, lake_flags: Callable) -> None:
    """Add `serve` and `users` to the CLI's subparsers, with the CLI's own helpers."""
    serve = add(sub, "serve", "the review app: flagged clusters, rules, plots, click-streams and verdicts (web + API)",
                cmd_serve, "lakelens users add --auth users.json --name ana --role reviewer < password.txt\n"
                           "  lakelens serve --lake LAKE --auth users.json   # then open http://127.0.0.1:8000/")
    lake_flags(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1); any other needs --auth")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--auth", help="users file (`lakelens users add`); without it: loopback only, no sign-in")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); cookies become Secure")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--session-minutes", type=float, default=30.0,
                       help="a session ends after this long idle (default: 30); at most 12 h in all")
    serve.add_argument("--recheck-seconds", type=float, default=2.0,
                       help="how often to look for newly published runs (default: 2)")

    users = sub.add_parser("users", help="users of the review app: add, token, remove, list")
    users_sub = users.add_subparsers(dest="users_cmd", required=True, parser_class=type(users))
    ua = add(users_sub, "add", "add a user or change one's role and password (password read from standard input)",
             cmd_users_add, "echo 'a long passphrase' | lakelens users add --auth users.json --name ana --role reviewer")
    ut = add(users_sub, "token", "issue an API token for scripts (printed once; send it as Authorization: Bearer)",
             cmd_users_token, "lakelens users token --auth users.json --name etl-bot")
    ur = add(users_sub, "remove", "delete a user with their tokens", cmd_users_remove,
             "lakelens users remove --auth users.json --name ana")
    ul = add(users_sub, "list", "list users, roles and token counts", cmd_users_list,
             "lakelens users list --auth users.json", json_help="print the users as JSON")
    for parser in (ua, ut, ur, ul):
        parser.add_argument("--auth", required=True, help="the users file (JSON, created if missing, mode 0600)")
    for parser in (ua, ut, ur):
        parser.add_argument("--name", required=True, help="user name: letters, digits and . _ @ -")
    ua.add_argument("--role", required=True, choices=["viewer", "reviewer", "admin"],
                    help="viewer reads; reviewer also records verdicts; admin also manages users")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lakelens.infra.config import LakelensConfig
    from lakelens.infra.storage import Lake
    from lakelens.serve.app import create_app, is_loopback
    from lakelens.serve.auth import UserStore

    if not is_loopback(args.host) and not args.auth:
        raise InputError(f"refusing to serve on {args.host} without --auth: anyone who can reach it could read "
                         "and record verdicts; create users with `lakelens users add` and pass --auth FILE")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key go together")
    if args.auth:
        UserStore(args.auth)  # a missing or broken file is bad input, before anything binds
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535; got {args.port}")
    config = LakelensConfig.load(args.config, {})
    lake = Lake(args.lake, config.storage)
    app = create_app(lake, args.auth, tls=bool(args.tls_cert), session_idle_s=args.session_minutes * 60,
                     recheck_s=args.recheck_seconds)
    scheme = "https" if args.tls_cert else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"lakelens serve: {scheme}://{host}:{args.port}/ over {lake.uri()} "
          f"({'sign-in with ' + args.auth if args.auth else 'loopback only, no sign-in'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, server_header=False, date_header=True,
                timeout_graceful_shutdown=5)
    return 0


def _password_from_stdin() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise InputError("the passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_users_add(args: argparse.Namespace) -> int:
    from lakelens.serve.auth import add_user

    user = add_user(args.auth, args.name, args.role, _password_from_stdin())
    print(f"users: {user.name} is a {user.role} in {args.auth}")
    return 0


def cmd_users_token(args: argparse.Namespace) -> int:
    from lakelens.serve.auth import issue_token

    print(issue_token(args.auth, args.name))
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    from lakelens.serve.auth import remove_user

    if not remove_user(args.auth, args.name):
        raise LookupError(f"no user {args.name!r} in {args.auth}")
    print(f"users: removed {args.name} from {args.auth}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    import json

    from lakelens.serve.auth import list_users

    users = list_users(args.auth)
    if args.json:
        print(json.dumps(users, indent=2))
    else:
        for user in users:
            print(f"{user['name']}\t{user['role']}\ttokens: {user['tokens']}")
    return 0
