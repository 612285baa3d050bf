"""Headless Chromium that trusts itproxy's CA and sends the environment's names to it.

Chromium on Linux trusts a private CA only through an NSS database (``$HOME/.pki/nssdb``),
so each browser gets a throwaway HOME holding one with the root added (certutil, Debian's
``libnss3-tools``); ``--host-resolver-rules`` maps ``*.test`` to itproxy's listeners, so pages
use the URLs production uses. Needs Debian's ``chromium`` and ``chromium-driver`` and
``pip install 'itproxy[browser]'``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from .errors import ItproxyError

if TYPE_CHECKING:
    from .env import Env

CA_NICKNAME = "itproxy local CA"


def _need(program: str, package: str) -> str:
    path = shutil.which(program)
    if not path:
        raise ItproxyError(f"{program} is not installed: apt-get install {package}")
    return path


def chromium_binary() -> str:
    """Debian's chromium (or google-chrome if that is what there is)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise ItproxyError("Chromium is not installed: apt-get install chromium chromium-driver")


def nss_home(home: Path, ca_root: Path) -> Path:
    """Make ``home`` a HOME whose NSS database trusts ``ca_root`` for TLS servers; returns it."""
    certutil = _need("certutil", "libnss3-tools")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    if not (db / "cert9.db").exists():
        subprocess.run([certutil, "-N", "--empty-password", "-d", f"sql:{db}"], check=True,
                       capture_output=True)
    subprocess.run([certutil, "-A", "-n", CA_NICKNAME, "-t", "C,,", "-i", str(ca_root), "-d", f"sql:{db}"],
                   check=True, capture_output=True)
    return home


def chromium_command(env: "Env", home: Path, headless: bool = False,
                     urls: Sequence[str] = ()) -> List[str]:
    """A Chromium command line for ``env``: its own profile under ``home``, names mapped."""
    cmd = [chromium_binary(), f"--user-data-dir={home / 'profile'}", *env.chromium_args(),
           "--no-first-run", "--no-default-browser-check"]
    if headless:
        cmd.append("--headless=new")
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")
    return cmd + list(urls)


IFA_F_TENTATIVE = 0x40


def wait_for_network_settled(timeout: float = 5.0) -> bool:
    """Wait until no IPv6 address of this machine is still tentative; False after ``timeout``.

    A container that starts adds a veth whose link-local address finishes duplicate address
    detection about 1.5 s later; Chromium takes that for a network change and fails whatever
    it has in flight with ERR_NETWORK_CHANGED. So navigation waits for the addresses to settle.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open("/proc/net/if_inet6") as f:
                tentative = any(int(line.split()[4], 16) & IFA_F_TENTATIVE for line in f if line.strip())
        except OSError:  # no IPv6: nothing to wait for
            return True
        if not tentative:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def chrome(env: "Env", home: Path, headless: bool = True, extra_args: Sequence[str] = ()) -> Any:
    """A Selenium WebDriver on headless Chromium trusting ``env``'s CA (HOME is ``home``).

    Its ``get`` waits for the machine's network to settle first and navigates once more if the
    page still failed with ERR_NETWORK_CHANGED (see :func:`wait_for_network_settled`)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise ItproxyError("selenium is not installed: pip install 'itproxy[browser]'") from e

    class Chrome(webdriver.Chrome):
        def get(self, url: str) -> None:
            wait_for_network_settled()
            super().get(url)
            if self.current_url.startswith("chrome-error://") and "ERR_NETWORK_CHANGED" in self.page_source:
                wait_for_network_settled()
                super().get(url)

    driver_path = _need("chromedriver", "chromium-driver")
    nss_home(home, env.ca_root)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for arg in chromium_command(env, home, headless=headless)[1:]:
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--window-size=1280,900")
    for arg in extra_args:
        options.add_argument(arg)
    service_env = dict(os.environ, HOME=str(home))
    service = Service(executable_path=driver_path, env=service_env)
    return Chrome(service=service, options=options)


def screenshot(driver: Any, path: Path) -> Optional[Path]:
    """Save a screenshot and the page's HTML beside it; None if the browser is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        driver.save_screenshot(str(path))
        path.with_suffix(".html").write_text(driver.page_source)
    except Exception:  # the browser may have crashed: the test's own failure says why
        return None
    return path
