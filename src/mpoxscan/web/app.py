"""The web app: ``create_app`` (the factory tests use) and ``serve`` (``mpoxscan serve``)."""

from __future__ import annotations

import atexit
import gc
import html
import ipaddress
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from mpoxscan._version import __version__
from mpoxscan.errors import BundleError
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.budgets import DecodeBudget, UploadGate
from mpoxscan.web.http_server import uvicorn_options
from mpoxscan.web.i18n import load_catalogues
from mpoxscan.web.middleware import (
    AllowedHostsMiddleware,
    CatchAllMiddleware,
    HeadAsGetMiddleware,
    HeaderCountMiddleware,
)
from mpoxscan.web.observability import AccessLogMiddleware, log_config
from mpoxscan.web.ratelimit import RateLimiter
from mpoxscan.web.routes import api, pages
from mpoxscan.web.security import SecurityHeadersMiddleware
from mpoxscan.web.settings import Settings

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"

_DESCRIPTION = (
    "Screen photos of skin lesions for mpox. A research and education screening aid, not a "
    "diagnosis. Photos are processed in memory and never stored. Errors have the body "
    '`{"error": {"code": "...", "message": "..."}}`.'
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the web app; the model loads once, when the app starts (its lifespan).

    Args:
        settings: the settings; read from ``MPOXSCAN_*`` environment variables when ``None``.

    Returns:
        The FastAPI app: pages at ``/``, ``/model``, ``/privacy``; the API under ``/api/v1``.
    """
    settings = settings or Settings()
    logging.getLogger("mpoxscan").setLevel(settings.log_level.upper())
    # AccessLogMiddleware replaces uvicorn's access log, which writes client addresses and
    # query strings; this also holds when uvicorn is started by hand rather than by serve().
    logging.getLogger("uvicorn.access").disabled = True
    app = FastAPI(
        title="mpoxscan",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan,
        # The Swagger and ReDoc pages load scripts from a CDN; the schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.predictor = None
    #: The bundle's metadata when ``serve`` has already checked it (one process only).
    app.state.bundle_meta = None
    app.state.micro_batcher = None
    app.state.model_info = None
    app.state.audit_log = None
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.decode_budget = DecodeBudget(
        settings.max_concurrent_decodes, settings.decode_budget_bytes, settings.decode_wait_seconds
    )
    app.state.upload_gate = UploadGate(
        settings.max_uploads_in_flight,
        settings.max_upload_bytes_in_flight,
        settings.max_uploads_per_client,
    )
    app.state.catalogues = load_catalogues()
    app.state.templates = Jinja2Templates(directory=TEMPLATES_DIR)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)
    # Middlewares added first run innermost: the catch-all's answer still passes through the
    # security headers and the request id.
    app.add_middleware(CatchAllMiddleware, error_response=_unexpected_error_response)
    app.add_middleware(HeaderCountMiddleware, max_headers=settings.max_header_count)
    if settings.allowed_hosts:
        # A forged Host header must not reach redirects or links (``Host: evil.example``).
        app.add_middleware(
            AllowedHostsMiddleware,
            allowed_hosts=settings.allowed_hosts,
            error_response=_host_refused_response,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(HeadAsGetMiddleware)
    # Added last, so it wraps the others: every answer, the catch-all 500 included, carries
    # the request id and is logged.
    app.add_middleware(AccessLogMiddleware, log_client_ip=settings.log_client_ip)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the predictor once per process, and warm it so the first request is fast; start
    the micro-batcher (stopped at shutdown); open the audit log when it is on."""
    from mpoxscan.inference.predictor import Predictor
    from mpoxscan.web.micro_batching import MicroBatcher
    from mpoxscan.web.service import model_info, warm_up

    settings: Settings = app.state.settings
    _private_matplotlib_dir()
    app.state.prediction_limiter = anyio.CapacityLimiter(settings.max_concurrent_predictions)
    _single_threaded_blas()
    if settings.audit_log:
        from mpoxscan.web.prediction_log import AuditLog

        app.state.audit_log = await run_in_threadpool(AuditLog, settings.audit_db_url)
    predictor = await run_in_threadpool(
        partial(
            Predictor.load,
            settings.bundle_dir,
            backend=settings.backend,
            meta=app.state.bundle_meta,
        )
    )
    await run_in_threadpool(warm_up, predictor)
    app.state.micro_batcher = MicroBatcher(
        # Looked up at each call, so a test can replace the predictor's method.
        lambda photos: predictor.assess_many(photos),
        max_size=settings.micro_batch_max_size,
        max_wait_s=settings.micro_batch_max_wait_ms / 1000,
    ).start()
    batch, threads = settings.micro_batch_max_size, settings.max_concurrent_predictions
    if batch > 1 and threads < 2 * batch:
        logger.warning(
            "micro-batches of up to %d photos gather at most %d requests "
            "(max_concurrent_predictions); about %d keeps them full",
            batch,
            threads,
            2 * batch,
        )
    _freeze_startup_objects()
    app.state.predictor = predictor
    app.state.model_info = model_info(predictor)
    logger.info(
        "serving model %s (%s, %s backend) from %s",
        app.state.model_info.version,
        app.state.model_info.architecture,
        app.state.model_info.backend,
        settings.bundle_dir,
    )
    yield
    # Let the collector see them again: in a process that starts several apps (tests), an
    # app that stopped must not stay pinned.
    gc.unfreeze()
    app.state.predictor = None
    batcher = app.state.micro_batcher
    await run_in_threadpool(batcher.close)
    logger.info("model calls by photos per call: %s", dict(sorted(batcher.batch_sizes.items())))
    app.state.micro_batcher = None
    if app.state.audit_log is not None:
        app.state.audit_log.close()
        app.state.audit_log = None


def _freeze_startup_objects() -> None:
    """Move the objects that exist once the model is loaded out of the garbage collector's
    reach (``gc.freeze``).

    They live as long as the process (modules, the model, its libraries: about 280,000
    objects), and a full collection walks every one of them with the GIL held: 150-180 ms
    with ``models/default``, during which no request is answered, health checks included.
    Frozen, they are skipped, and a full collection walks only what was created later (well
    under 1 ms just after start-up). Garbage is collected first, so none is pinned.
    """
    gc.collect()
    gc.freeze()


def _private_matplotlib_dir() -> None:
    """Keep matplotlib's files out of the home directory.

    captum (Grad-CAM) imports matplotlib, which creates ``~/.config/matplotlib`` and writes a
    font list under ``~/.cache/matplotlib`` when it loads. The server points it at a temporary
    folder of its own, removed when the process exits, unless ``MPLCONFIGDIR`` already names
    one.
    """
    if os.environ.get("MPLCONFIGDIR"):
        return
    folder = tempfile.mkdtemp(prefix="mpoxscan-matplotlib-")
    os.environ["MPLCONFIGDIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def _single_threaded_blas() -> None:
    """One BLAS thread per process: the only BLAS work while serving is the out-of-domain
    distance (a matrix-vector product), and OpenBLAS's idle threads spin on the cores ONNX
    Runtime needs next (on 2 cores, back-to-back photos took 16 ms each instead of 11)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"error": {"code", "message"}}`` (or an HTML page off the API)."""

    async def on_api_error(request: Request, exc: ApiError) -> Response:
        if _wants_html(request):
            return pages.render_error(request, exc)
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in exc.errors()
        )
        return await on_api_error(request, ApiError("validation_error", problems or "Invalid."))

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = ApiError(code, str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        return await on_api_error(request, error)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _unexpected_error_response(request: Request) -> Response:
    """The answer to an exception no handler caught: ``500 internal_error``, as an HTML page
    on pages and JSON on the API, with no detail (the traceback goes to the server log)."""
    error = ApiError("internal_error", "Something went wrong on the server; try again later.")
    return _error_response(request, error)


def _host_refused_response(request: Request) -> Response:
    """The answer to a ``Host`` not in ``MPOXSCAN_ALLOWED_HOSTS``: ``400 invalid_host`` (the
    host sent is not repeated)."""
    error = ApiError(
        "invalid_host",
        "This server does not answer to the host name in the request; "
        "use the address the service is published under.",
    )
    return _error_response(request, error)


def _error_response(request: Request, error: ApiError) -> Response:
    """``error`` as an HTML page on pages and JSON on the API, outside any route (from a
    middleware); a plain HTML page if the error page itself fails."""
    if _wants_html(request):
        try:
            return pages.render_error(request, error)
        except Exception:  # the page itself cannot be rendered: a plain page, still HTML
            logger.exception("the error page could not be rendered")
            return HTMLResponse(
                f"<!DOCTYPE html><title>Error</title><p>{html.escape(error.message)}</p>",
                status_code=error.status_code,
            )
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _wants_html(request: Request) -> bool:
    """Pages get HTML error pages; the API (and static files) get JSON."""
    path = request.url.path
    return not (path.startswith("/api/") or path.startswith("/static/") or path == "/openapi.json")


def serve(
    bundle_dir: Path | str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    log_level: str | None = None,
    micro_batch_max_size: int | None = None,
    micro_batch_max_wait_ms: float | None = None,
    max_concurrent_predictions: int | None = None,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve the web app with uvicorn until interrupted.

    Args:
        bundle_dir: the model bundle; ``MPOXSCAN_BUNDLE_DIR`` or ``models/default`` when
            ``None``.
        host: the address to listen on (``0.0.0.0`` to accept other machines).
        port: the TCP port.
        workers: processes, each with its own copy of the model; from the settings when ``None``.
        log_level: from the settings when ``None``.
        micro_batch_max_size: photos of concurrent requests run through the model together
            (1: no micro-batching); from the settings when ``None``.
        micro_batch_max_wait_ms: longest wait for other requests' photos; from the settings
            when ``None``.
        max_concurrent_predictions: requests decoded and predicted at once per process; from
            the settings when ``None``.
        forwarded_allow_ips: the reverse proxies whose ``X-Forwarded-For`` is believed
            (addresses or networks, comma-separated); none unless set here or in the settings.

    Uvicorn runs with the settings' bounds on request heads, slow clients and connections
    (``mpoxscan.web.http_server``); on a loopback address with no ``MPOXSCAN_ALLOWED_HOSTS``,
    only loopback host names are accepted in ``Host``.

    Raises:
        BundleError: when the bundle is missing or invalid (the message says which and why);
            nothing is started then.
    """
    import uvicorn

    from mpoxscan.inference.bundle import read_bundle_meta

    choices = {
        "bundle_dir": None if bundle_dir is None else Path(bundle_dir).resolve(),
        "workers": workers,
        "log_level": log_level,
        "micro_batch_max_size": micro_batch_max_size,
        "micro_batch_max_wait_ms": micro_batch_max_wait_ms,
        "max_concurrent_predictions": max_concurrent_predictions,
        "forwarded_allow_ips": forwarded_allow_ips,
    }
    settings = Settings(**{name: value for name, value in choices.items() if value is not None})
    if not settings.allowed_hosts and _is_loopback(host):
        settings.allowed_hosts = list(LOOPBACK_HOSTS)
        choices["allowed_hosts"] = settings.allowed_hosts
    try:
        meta = read_bundle_meta(settings.bundle_dir)
    except BundleError as exc:
        raise BundleError(
            f"Cannot serve the model in {settings.bundle_dir}: {exc.message} "
            "Train one with `mpoxscan train`, or pass --model-dir with a valid bundle."
        ) from exc
    common = {
        "host": host,
        "port": port,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level),
        "access_log": False,
        **uvicorn_options(settings),
    }
    if settings.workers == 1:
        app = create_app(settings)
        app.state.bundle_meta = meta  # checked just now: the predictor does not hash it again
        uvicorn.run(app, **common)
        return
    # Worker processes each build their app from the environment, so hand the choices on.
    for name in choices:
        if name != "workers":
            value = getattr(settings, name)
            text = json.dumps(value) if isinstance(value, list) else str(value)
            os.environ[f"MPOXSCAN_{name.upper()}"] = text
    uvicorn.run("mpoxscan.web.app:create_app", factory=True, workers=settings.workers, **common)


#: ``Host`` names a server on a loopback address answers to by default.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
