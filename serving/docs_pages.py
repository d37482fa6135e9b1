"""The API's interactive docs, /docs (Swagger UI) and /redoc (ReDoc), with their scripts
served by the app itself.

FastAPI's default pages load Swagger UI and ReDoc from a public CDN, so on a machine
without internet access /docs renders a blank page. This is FastAPI's recipe for
self-hosted docs assets, with the files of the pinned ``fastapi-offline`` package
(Swagger UI 5 and ReDoc 2 bundles; its package data only, not its app factory).
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = ("fastapi_offline", "static")  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
ASSETS_PATH = "/docs-assets"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
# Added to FastAPI's defaults.
SWAGGER_UI_PARAMETERS = {
    # Swagger UI would send the schema to validator.swagger.io for its badge: nothing leaves the machine.
    "validatorUrl": None,
    "tryItOutEnabled": True,  # the request examples are ready to send
    "displayRequestDuration": True,
}


def add_docs_pages(app: FastAPI) -> None:
    """Serve /docs and /redoc for ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url
    assert openapi_url is not None, "the docs pages need the OpenAPI document"
    favicon = f"{ASSETS_PATH}/favicon.png"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=favicon, swagger_ui_parameters=SWAGGER_UI_PARAMETERS)

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        # No Google Fonts: ReDoc falls back to the system's fonts.
        page = get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js", redoc_favicon_url=favicon,
                              with_google_fonts=False)
        # ReDoc's footer shows Redocly's logo from their CDN (hidden when it fails): images from here only.
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page
