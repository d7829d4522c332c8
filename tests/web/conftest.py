"""Fixtures of the web tests: a small real model bundle (see ``web_support``), settings with
small limits, and a module-scoped TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from web_support import build_test_bundle


@pytest.fixture(scope="session")
def web_bundle(tmp_path_factory) -> Path:
    """The small real bundle, built once per test session."""
    return build_test_bundle(tmp_path_factory.mktemp("web-bundle") / "bundle")


@pytest.fixture(scope="session")
def no_lesion_bundle(tmp_path_factory) -> Path:
    """The small real bundle with a "no lesion seen" head, built once per test session."""
    return build_test_bundle(tmp_path_factory.mktemp("no-lesion-bundle") / "bundle", no_lesion=True)


@pytest.fixture(scope="module")
def web_settings(web_bundle):
    """Settings with small limits, so the limit tests need only small payloads."""
    from mpoxscan.web.settings import Settings

    return Settings(
        bundle_dir=web_bundle,
        max_upload_bytes=3 * 1024 * 1024,
        max_request_bytes=8 * 1024 * 1024,
        max_files=4,
        max_pixels=4_000_000,
        rate_limit_per_minute=0,
        # Every request of a TestClient comes from one client: the concurrency tests send more
        # at once than one client may (the caps have their own tests).
        max_uploads_per_client=64,
        max_uploads_in_flight=64,
    )


@pytest.fixture(scope="module")
def client(web_settings) -> Iterator[TestClient]:
    """A TestClient of the app (its lifespan loads the model once per module)."""
    from mpoxscan.web.app import create_app

    with TestClient(create_app(web_settings)) as test_client:
        yield test_client
