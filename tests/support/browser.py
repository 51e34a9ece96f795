"""What the admin page's browser tests share: Debian's Chromium driven by Playwright (no
browser download), accounts, logging in, and the checks every page gets.

``snap`` keeps a screenshot of a page at desktop (1280 px) and phone (390 px) width in
$BOUNCE_RELAY_ARTIFACTS (CI sets it to .ci/out and keeps the folder), and checks at both
widths that the page does not scroll sideways (wide tables scroll inside their own box)
and that every form control a person can reach has a label.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from relay.clock import utc_now
from relay.passwords import hash_password
from tests.support.tools import needs

__all__ = [
    "CHROMIUM",
    "PASSWORD",
    "VIEWER_PASSWORD",
    "add_accounts",
    "admin_config",
    "artifacts",
    "launch",
    "log_in",
    "needs_chromium",
    "snap",
    "unlabelled_controls",
]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "browser-test-pass"
VIEWER_PASSWORD = "viewer-test-pass"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Skipped on a machine without Chromium; in CI (BOUNCE_RELAY_CI=1) it runs and fails.
needs_chromium = needs(
    Path(CHROMIUM).exists(), "Debian's chromium is not installed (.ci/run installs it)"
)


async def add_accounts(store: Any) -> None:
    """alice may do everything, victor may only look."""
    for name, role, password in (
        ("alice", "admin", PASSWORD),
        ("victor", "viewer", VIEWER_PASSWORD),
    ):
        hashed = await asyncio.to_thread(hash_password, password)
        assert await store.add_admin_account(name, role, hashed, utc_now(), "test")


def admin_config(make_config: Any) -> Any:
    """A relay with its admin page on a free port and delivery off."""
    return make_config(
        '[smtp]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
        "[delivery]\nenabled = false\n",
        replace_base=True,
    )


def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $BOUNCE_RELAY_ARTIFACTS (CI keeps it), else ``tmp_path``."""
    folder = Path(os.environ.get("BOUNCE_RELAY_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def launch(pw: Any) -> Any:
    return await pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


async def log_in(page: Any, url: str, user: str = "alice", password: str = PASSWORD) -> None:
    """Log in through the form, with the keyboard: type, Tab, type, Enter."""
    await page.goto(url + "/report")
    assert page.url.endswith("/login")
    await page.focus("input[name=user]")
    await page.keyboard.type(user)
    await page.keyboard.press("Tab")
    await page.keyboard.type(password)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert "/report" in page.url, page.url
    assert f"{user} (" in await page.inner_text("nav")


# Visible inputs, selects and text areas with no label: neither a <label> (around it or
# for= its id), aria-label, aria-labelledby nor a title. Buttons label themselves.
_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && e.offsetParent !== null)
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               && !e.getAttribute('aria-labelledby') && !e.title)
  .map(e => e.outerHTML.slice(0, 120))"""


async def unlabelled_controls(page: Any) -> list[str]:
    return list(await page.evaluate(_UNLABELLED))


async def snap(page: Any, name: str, folder: Path) -> None:
    """Screenshots of the page as it is at desktop and phone width (``name``-desktop.png,
    ``name``-phone.png), checking at each width that the page does not scroll sideways and
    that its controls are labelled; the viewport is left at desktop width."""
    for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
        await page.set_viewport_size(size)
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 1, f"{name} at {label} width scrolls sideways by {overflow} px"
        unlabelled = await unlabelled_controls(page)
        assert unlabelled == [], f"{name}: controls without a label: {unlabelled}"
        await page.screenshot(path=str(folder / f"{name}-{label}.png"), full_page=True)
