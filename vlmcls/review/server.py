"""The review page's web side, on Flask (``pip install 'vlmcls[review]'``).

Why Flask: a maintained WSGI framework (Pallets) whose request parsing, routing and file sending we need not write;
synchronous like the rest of vlmcls (re-scoring is torch work on a thread, no event loop to bridge); Werkzeug's
threaded server binds one address and serves a handful of local reviewers; its test client drives the security
tests without sockets. Starlette/FastAPI would add an ASGI server and async for nothing here.

Security, each checked by tests/test_review.py:
- binds 127.0.0.1 only, and answers only requests whose Host is that address or localhost (no DNS rebinding);
- every request carries the random token (``?token=`` on page and image loads, the ``X-Review-Token`` header on
  API calls); without it: 403;
- state changes are POSTs of JSON with the token in the header and, when the browser sends one, an Origin of this
  server: a cross-site form can set neither, so it is refused;
- images are served by their row number in the results, never by a path from the request: any other path is 404;
- the page loads nothing from elsewhere (Content-Security-Policy: ``default-src 'none'`` plus self);
- the labels file is the one beside the results (:func:`vlmcls.review.labels.labels_path_for`); no request names a file.
"""

from __future__ import annotations

import hmac
import mimetypes
import secrets
from importlib import resources
from typing import Any

from ..errors import ConfigError, MissingExtraError, VlmclsError
from .session import ReviewSession

__all__ = ["create_app", "serve", "CSP"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TOKEN_HEADER = "X-Review-Token"


def _flask() -> Any:
    try:
        import flask
    except ImportError as exc:
        raise MissingExtraError("the review page needs Flask: pip install 'vlmcls[review]'") from exc
    return flask


def _asset(name: str) -> str:
    return resources.files("vlmcls.review").joinpath("static", name).read_text(encoding="utf-8")


def create_app(session: ReviewSession, token: str | None = None, port: int | None = None) -> Any:
    """The Flask app serving ``session``; ``app.config['REVIEW_TOKEN']`` holds the token."""
    flask = _flask()
    app = flask.Flask(__name__, static_folder=None)
    token = token or secrets.token_urlsafe(24)
    app.config["REVIEW_TOKEN"] = token
    app.config["REVIEW_PORT"] = port

    def hosts() -> set[str]:
        port_ = app.config["REVIEW_PORT"]
        names = ("127.0.0.1", "localhost")
        return {f"{h}:{port_}" for h in names} if port_ else set(names) | {f"{h}:80" for h in names}

    @app.before_request
    def guard() -> Any:
        request = flask.request
        if request.host not in hosts():
            flask.abort(403)
        given = request.headers.get(TOKEN_HEADER, "") if request.method != "GET" else (
            request.args.get("token") or request.headers.get(TOKEN_HEADER, ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            flask.abort(403)
        if request.method != "GET":
            origin = request.headers.get("Origin")
            if origin is not None and origin.split("://", 1)[-1] not in hosts():
                flask.abort(403)
            if not request.is_json:
                flask.abort(415)
        return None

    @app.after_request
    def headers(response: Any) -> Any:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(VlmclsError)
    def refused(exc: VlmclsError) -> Any:
        return flask.jsonify(error=str(exc)), 400

    @app.get("/")
    def page() -> Any:
        from html import escape

        html = _asset("page.html").replace("{{token}}", escape(token, quote=True))
        return flask.Response(html, mimetype="text/html")

    @app.get("/page.js")
    def script() -> Any:
        return flask.Response(_asset("page.js"), mimetype="text/javascript")

    @app.get("/page.css")
    def style() -> Any:
        return flask.Response(_asset("page.css"), mimetype="text/css")

    @app.get("/image/<int:row>")
    def image(row: int) -> Any:
        path = session.image_file(row)
        if path is None:
            flask.abort(404)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not kind.startswith("image/"):
            kind = "application/octet-stream"
        return flask.send_file(path, mimetype=kind, conditional=False, etag=False)

    @app.get("/api/state")
    def state() -> Any:
        return flask.jsonify(session.state())

    @app.post("/api/act")
    def act() -> Any:
        body = flask.request.get_json(silent=True) or {}
        entries = body.get("acts") if isinstance(body.get("acts"), list) else [body]
        done = [session.act(e.get("row"), str(e.get("action")), e.get("label"), body.get("reviewer"))
                for e in entries if isinstance(e, dict)]
        return flask.jsonify(done=len(done))

    @app.post("/api/improve")
    def improve() -> Any:
        return flask.jsonify(session.improve().summary())

    @app.post("/api/keep")
    def keep() -> Any:
        return flask.jsonify(written=session.keep().name, accuracy=session.accuracy())

    @app.get("/api/next")
    def label_next() -> Any:
        return flask.jsonify(rows=session.label_next())

    return app


def serve(session: ReviewSession, open_browser: bool = True, port: int = 0, announce: Any = print) -> None:
    """Serve on 127.0.0.1 (a free port unless given) until Ctrl-C; ``announce`` gets the URL (with the token)."""
    _flask()
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request lines would print the token
    app = create_app(session)
    server = make_server("127.0.0.1", port, app, threaded=True)
    app.config["REVIEW_PORT"] = server.server_port
    url = f"http://127.0.0.1:{server.server_port}/?token={app.config['REVIEW_TOKEN']}"
    try:  # Ctrl-C at any point from here stops the server and returns (the labels are already on disk)
        announce(url)
        if open_browser:
            try:
                import webbrowser

                webbrowser.open(url)
            except Exception:  # no browser here (a server, ssh): the URL is printed
                pass
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def check_port(port: int) -> int:
    if not 0 <= port < 65536:
        raise ConfigError(f"port {port} is not a TCP port (0 … 65535; 0 picks a free one).")
    return port
