"""The web API's errors: a stable ``code``, an HTTP status and a message that says what to do.

Every error response has the body ``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

from mpoxscan.errors import InvalidImageError

#: HTTP status of each error code the API returns (anything else is 422 or 500).
ERROR_STATUS: dict[str, int] = {
    "no_file": 422,
    "too_many_files": 422,
    "too_many_parts": 422,
    "file_too_large": 413,
    "request_too_large": 413,
    "empty_file": 422,
    "not_an_image": 422,
    "truncated_image": 422,
    "too_many_pixels": 422,
    "image_too_small": 422,
    "unsupported_media_type": 415,
    "malformed_request": 400,
    "invalid_host": 400,
    "too_many_headers": 431,
    "upload_timeout": 408,
    "validation_error": 422,
    "not_found": 404,
    "method_not_allowed": 405,
    "rate_limited": 429,
    "too_many_uploads": 429,
    "model_unavailable": 503,
    "server_busy": 503,
    "internal_error": 500,
}


class ApiError(Exception):
    """An error the API reports to the client as JSON (or the pages as an error page).

    Args:
        code: a key of ``ERROR_STATUS``.
        message: what went wrong and what to do, in English.
        headers: extra response headers (``Retry-After`` for ``rate_limited``).
    """

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = ERROR_STATUS.get(code, 422)
        self.headers = headers or {}

    @classmethod
    def from_invalid_image(cls, exc: InvalidImageError) -> ApiError:
        """Map the library's ``InvalidImageError`` (and its ``code``) to an API error."""
        return cls(exc.code, exc.message)

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body of the error response."""
        return {"error": {"code": self.code, "message": self.message}}
