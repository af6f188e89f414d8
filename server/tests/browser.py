"""The system's chromium driven by Playwright: for the dashboard's tests and its screenshots.

Playwright drives the browser Debian installs (`apt-get install chromium`; `make check` does
it), never one of its own: `playwright install` would download a browser, and nothing may
be fetched at test time. Each session gets a fresh profile folder, so nothing (a saved API
key, a cache) carries over from one to the next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, Request, sync_playwright

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Headless, and quiet: no first-run page, no calls home (component updates, sync, safe
# browsing lists), no GPU (none in CI).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}


def missing_chromium() -> str | None:
    """Why the browser cannot run here, or None."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return None
    return (
        f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium "
        "(apt-get install chromium; make check installs it), or CHROMIUM_PATH naming one"
    )


@contextmanager
def chromium(profile: Path, scale: float = 1.0) -> Iterator[BrowserContext]:
    """A browser with a fresh profile in `profile`; closed on the way out."""
    why = missing_chromium()
    if why:
        raise RuntimeError(why)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]},
            device_scale_factor=scale,
        )
        try:
            yield context
        finally:
            context.close()


class RequestLog:
    """Every URL a page asks for (documents, scripts, fetches, images...)."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        self.urls.append(request.url)

    def elsewhere(self, origin: str) -> list[str]:
        """The URLs that went anywhere but `origin` (inline `data:` URLs are no request)."""
        return [u for u in self.urls if not u.startswith((origin + "/", "data:"))]
