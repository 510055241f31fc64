"""The dashboard at ``/ui``: plain HTML, CSS and one small script served from the package.

No build step, no CDN, no chart library (the charts are drawn on a ``<canvas>`` by
``app.js``), so it works offline. The page and its two assets are open (they hold no
data); everything they show comes from the key-protected ``/v1/oblix/*`` endpoints
(:mod:`oblix_server.usage_api`). The key typed into the login form lives only in the
page's memory (a JavaScript variable): not in a cookie, local storage or the URL, so a
reload asks for it again.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
#: The dashboard's files by path (served without the key: they hold no data).
PAGES = {
    "/ui": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/app.css": ("app.css", "text/css"),
}
UI_PATHS = frozenset(PAGES)
#: Only this origin's own files and API: nothing is fetched from elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    name, media = PAGES[request.url.path]
    return Response((STATIC / name).read_bytes(), media_type=f"{media}; charset=utf-8", headers=_HEADERS)


def routes() -> list[Route]:
    return [Route(path, page, methods=["GET"]) for path in PAGES]
