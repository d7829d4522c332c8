"""Take the README's screenshot of the result page (docs/screenshot-result.png).

Serves a bundle with ``mpoxscan serve`` on a free local port, uploads one photo in Debian's
Chromium (driven by Playwright) and saves the page once the result is shown:

    python scripts/screenshot_result.py --model-dir models/default \\
        --photo "../shared/data/msld-v1/Monkey Pox/P28_1.jpg" --out docs/screenshot-result.png
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    """Poll the health endpoint until the server answers (or fail if it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mpoxscan serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("mpoxscan serve did not start in time")


def shoot(url: str, photo: Path, out: Path) -> None:
    """Upload ``photo`` on the page and save a full-page screenshot of the result."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.set_input_files("#file-input", str(photo))
        page.click("#submit")
        page.locator("#results .band-badge").first.wait_for(timeout=60_000)
        time.sleep(0.5)  # let the heat map finish drawing
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot-result.png"))
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        ["mpoxscan", "serve", "--model-dir", str(args.model_dir), "--port", str(port)]
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server)
        shoot(url, args.photo, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
