"""Web settings, read from ``MPOXSCAN_*`` environment variables (or passed in by tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_MIB = 1024 * 1024
#: Text fields a form may send besides its photos (``explain`` and room to spare).
_FORM_FIELDS = 4


class Settings(BaseSettings):
    """How the web app serves the model; every field has an ``MPOXSCAN_<NAME>`` variable.

    Attributes:
        bundle_dir: the model bundle to serve (relative paths are from the working directory).
        backend: ``"auto"`` (ONNX Runtime when the bundle has ``model.onnx``), ``"onnx"`` or
            ``"torch"``.
        max_upload_bytes: largest photo accepted; phone photos are 2-8 MiB.
        max_files: most photos in one request (photos of one patient).
        max_request_bytes: largest request body; checked while it streams in.
        max_pixels: largest width x height decoded (the decompression-bomb guard).
        max_parts: most multipart parts in one request (photos, text fields and empty file
            inputs together); a request with more is refused while it streams in.
        max_upload_seconds: longest time a request body may take to arrive; a slower upload
            (a stalled phone, or a client trickling bytes to hold a connection) gets
            ``upload_timeout``.
        max_concurrent_predictions: requests whose photos are decoded and run through the
            model at the same time; the rest wait, so a burst cannot exhaust memory. A
            micro-batch only gathers requests that are in here at once: with micro-batching,
            about twice ``micro_batch_max_size`` keeps batches full while the next ones decode.
        micro_batch_max_size: most photos of concurrent requests run through the model in one
            call; 1 (the default) turns micro-batching off, and each request then runs the
            model by itself. Off because on 2 cores batching gave no more requests per second
            and needs many more photos in memory at once (``benchmarks/speed.md``, (d)).
        micro_batch_max_wait_ms: longest time photos that reached the model wait for other
            requests' photos still being decoded; a lone request never waits.
        rate_limit_per_minute: prediction requests per client IP per minute; 0 turns it off.
        store_uploads: must stay ``False``: mpoxscan never writes photos anywhere.
        log_level: the Python/uvicorn log level.
        cors_origins: origins allowed to call the API from a browser; empty keeps CORS closed.
            Comma-separated or a JSON list in the environment.
        workers: uvicorn worker processes (each loads its own copy of the model).
        log_client_ip: add the client's IP address to the access log (off: an address is
            personal data, and the log needs none to be useful).
        max_header_count: most header fields a request may have; more gets 431
            ``too_many_headers`` (their total size is bounded by ``max_header_bytes``).
        max_header_bytes: largest request line plus headers ``mpoxscan serve`` reads; a
            larger head gets 431 (or 400) and the connection is closed.
        header_timeout_seconds: time a connection has to send a whole request head; a slower
            one (slowloris) is closed.
        keep_alive_seconds: an idle keep-alive connection is closed after this.
        max_connections: connections and requests at once per process; over it uvicorn
            answers 503.
        forwarded_allow_ips: proxies (comma-separated addresses or networks, ``*`` for any)
            whose ``X-Forwarded-For``/``X-Forwarded-Proto`` are believed; empty (the default)
            believes none, so a client cannot choose its own address.
        allowed_hosts: ``Host`` header values accepted (``*.example.org`` patterns allowed);
            others get 400. Empty: any host for an app built by hand, and for
            ``mpoxscan serve`` on a loopback address ``localhost``, ``127.0.0.1`` and ``::1``.
        max_decoded_bytes: most memory decoding one photo may need (``decode_cost``); a
            photo that needs more gets ``too_many_pixels``.
        decode_budget_bytes: the decoding costs of all photos decoded at once in a process.
        max_concurrent_decodes: photos decoded at once in a process.
        decode_wait_seconds: longest wait for the decode budget; then 503 ``server_busy``.
        max_uploads_in_flight: request bodies received or held at once in a process; over
            it 503 ``server_busy`` before the body is read.
        max_upload_bytes_in_flight: their declared sizes together (a chunked body counts as
            ``max_request_bytes``).
        max_uploads_per_client: bodies at once from one client address (IPv6: its /64);
            over it 429 ``too_many_uploads``.
        audit_log: keep an audit log of predictions (time, model, probabilities, band and the
            photo's SHA-256, never the photo) in ``audit_db_url``. Off by default; setting
            ``MPOXSCAN_AUDIT_DB_URL`` turns it on too.
        audit_db_url: a SQLAlchemy database URL for the audit log; a SQLite file in the
            working directory by default.
    """

    model_config = SettingsConfigDict(env_prefix="MPOXSCAN_", extra="ignore")

    bundle_dir: Path = Path("models/default")
    backend: Literal["auto", "onnx", "torch"] = "auto"
    max_upload_bytes: int = Field(default=10 * _MIB, gt=0)
    max_files: int = Field(default=10, ge=1, le=100)
    # Ten full-size photos at the per-file limit, plus room for the multipart framing.
    max_request_bytes: int = Field(default=101 * _MIB, gt=0)
    # 50 MP covers 48 MP phone cameras; a 50 MP RGB image is about 150 MB decoded.
    max_pixels: int = Field(default=50_000_000, gt=0)
    max_parts: int = Field(default=40, ge=1)
    # A 10 MiB photo at 1 Mbit/s takes 80 s; two minutes leaves room for a slow phone link.
    max_upload_seconds: float = Field(default=120.0, gt=0)
    max_concurrent_predictions: int = Field(default=2, ge=1)
    micro_batch_max_size: int = Field(default=1, ge=1, le=256)
    micro_batch_max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    rate_limit_per_minute: int = Field(default=60, ge=0)
    store_uploads: bool = False
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    workers: int = Field(default=1, ge=1)
    log_client_ip: bool = False
    # Browsers send 10-20 header fields; 100 leaves room for proxies and still bounds the work.
    max_header_count: int = Field(default=100, ge=10)
    # nginx's default is 4 buffers of 8 KiB; one browser request head is 1-2 KiB.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    keep_alive_seconds: int = Field(default=5, ge=1)
    max_connections: int = Field(default=200, ge=1)
    forwarded_allow_ips: str = ""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_decoded_bytes: int = Field(default=320 * _MIB, gt=0)
    decode_budget_bytes: int = Field(default=320 * _MIB, gt=0)
    max_concurrent_decodes: int = Field(default=2, ge=1)
    decode_wait_seconds: float = Field(default=10.0, gt=0)
    max_uploads_in_flight: int = Field(default=16, ge=1)
    max_upload_bytes_in_flight: int = Field(default=160 * _MIB, gt=0)
    max_uploads_per_client: int = Field(default=4, ge=1)
    audit_log: bool = False
    audit_db_url: str = "sqlite:///mpoxscan-audit.sqlite3"

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept ``"https://a.org,https://b.org"`` or a JSON list as well as a list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("store_uploads")
    @classmethod
    def _never_store(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "store_uploads=True is not supported: mpoxscan processes photos in memory and "
                "never writes them anywhere; unset MPOXSCAN_STORE_UPLOADS."
            )
        return value

    @model_validator(mode="after")
    def _audit_url_turns_auditing_on(self) -> Settings:
        if "audit_db_url" in self.model_fields_set and not self.audit_log:
            # Naming a database is asking for the log; silently not writing it would be worse.
            self.audit_log = True
        return self

    @model_validator(mode="after")
    def _parts_fit_the_files(self) -> Settings:
        if self.max_parts < self.max_files + _FORM_FIELDS:
            raise ValueError(
                f"max_parts ({self.max_parts}) leaves no room for max_files ({self.max_files}) "
                f"photos and the form's {_FORM_FIELDS} text fields; raise MPOXSCAN_MAX_PARTS."
            )
        return self

    @model_validator(mode="after")
    def _budgets_fit_one_item(self) -> Settings:
        if self.decode_budget_bytes < self.max_decoded_bytes:
            raise ValueError(
                f"decode_budget_bytes ({self.decode_budget_bytes}) is below max_decoded_bytes "
                f"({self.max_decoded_bytes}): no photo at the limit could ever be decoded."
            )
        if self.max_upload_bytes_in_flight < self.max_request_bytes:
            raise ValueError(
                f"max_upload_bytes_in_flight ({self.max_upload_bytes_in_flight}) is below "
                f"max_request_bytes ({self.max_request_bytes}); raise "
                "MPOXSCAN_MAX_UPLOAD_BYTES_IN_FLIGHT."
            )
        return self

    @model_validator(mode="after")
    def _request_fits_a_photo(self) -> Settings:
        if self.max_request_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_request_bytes ({self.max_request_bytes}) is below max_upload_bytes "
                f"({self.max_upload_bytes}); raise MPOXSCAN_MAX_REQUEST_BYTES."
            )
        return self
