"""Debian's Chromium driven by Playwright, for the browser tests: one set of launch flags, one
fixture. Playwright's own browser download is never used (no internet here): the Debian package is.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Headless in a container: no sandbox (root), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright_chromium: object) -> Browser:
    """A headless Chromium from the Debian package with the flags above."""
    return playwright_chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        started = launch(playwright.chromium)
        try:
            yield started
        finally:
            started.close()
