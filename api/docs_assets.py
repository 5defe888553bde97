"""Interactive API docs that work without internet: ReDoc and Swagger UI served by the app.

Litestar's render plugins point at public CDNs (jsDelivr, cdn.redoc.ly, Google Fonts) by
default, so ``/docs`` is a blank page on an air-gapped network, behind a strict egress proxy
or on a laptop on a plane. Here every asset comes from the installed
``drf-spectacular-sidecar`` distribution: a PyPI package released monthly that ships the
upstream ``swagger-ui-dist`` and ``redoc`` bundles with their licences (Swagger UI 5 reads the
OpenAPI 3.1 document litestar generates). It declares Django as a dependency because it is
also a Django app; the package is only *located* here (``importlib.util.find_spec``), never
imported, so Django is never loaded by the service.

The routes: ``/docs`` (ReDoc), ``/docs/swagger`` (Swagger UI), ``/docs/openapi.json``, and the
static files under ``/docs/assets/``.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import OpenAPIRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

#: where the static files are mounted (below the OpenAPI controller's ``/docs``)
ASSETS_PATH = "/docs/assets"
#: the ReDoc bundle, served with its one hard-coded remote URL removed (``redoc_bundle``)
REDOC_JS_PATH = "/docs/redoc.standalone.js"
_DISTRIBUTION = "drf_spectacular_sidecar"
#: ReDoc's sidebar shows Redocly's logo from their CDN, unconditionally (the image hides
#: itself when it fails to load); with an empty ``src`` it fails at once, without a request
_REDOC_REMOTE_LOGO = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
_CACHE = CacheControlHeader(max_age=86400)


def assets_dir() -> Path:
    """The directory holding ``redoc/`` and ``swagger-ui-dist/`` inside the installed
    distribution, found without importing the package (its ``__init__`` imports Django)."""
    spec = importlib.util.find_spec(_DISTRIBUTION)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{_DISTRIBUTION} is not installed: it ships the docs' assets")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "static" / _DISTRIBUTION


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """ReDoc at ``/docs`` and Swagger UI at ``/docs/swagger``, every URL on this server.

    Google Fonts are off (ReDoc falls back to the system fonts) and the favicon is the one
    swagger-ui-dist ships, so the pages make no request to another host at all; the browser
    test in ``tests/api/test_docs_offline.py`` checks exactly that."""
    swagger = f"{ASSETS_PATH}/swagger-ui-dist"
    favicon = f"<link rel='icon' type='image/png' href='{swagger}/favicon-32x32.png'>"
    return [
        SwaggerRenderPlugin(path="/swagger", js_url=f"{swagger}/swagger-ui-bundle.js",
                            css_url=f"{swagger}/swagger-ui.css",
                            standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
                            favicon=favicon),
        RedocRenderPlugin(path="/", js_url=REDOC_JS_PATH, google_fonts=False, favicon=favicon),
    ]


@cache
def _redoc_bundle() -> bytes:
    bundle = (assets_dir() / "redoc" / "bundles" / "redoc.standalone.js").read_bytes()
    return bundle.replace(_REDOC_REMOTE_LOGO, b'src:""')


@get(REDOC_JS_PATH, include_in_schema=False, cache_control=_CACHE,
     media_type="text/javascript; charset=utf-8")
async def redoc_bundle() -> Response[bytes]:
    """ReDoc's standalone bundle without the request to Redocly's CDN for its logo (read
    once per process)."""
    return Response(_redoc_bundle(), media_type="text/javascript; charset=utf-8")


def docs_handlers() -> list[HTTPRouteHandler | Router]:
    """The routes the docs pages need: the static files (cached by browsers for a day; they
    change only with the package) and the ReDoc bundle."""
    return [create_static_files_router(path=ASSETS_PATH, directories=[assets_dir()],
                                       include_in_schema=False, name="docs_assets",
                                       cache_control=_CACHE),
            redoc_bundle]
