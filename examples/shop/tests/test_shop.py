"""The shop as its developers use it: production URLs from the host, from the containers and
from Chromium, known data for each test, and a restart of the api that no client notices."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from typing import Any, List

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from itproxy import Env


def test_the_api_answers_by_name_over_https_with_its_database_and_cache(itproxy_env: Env) -> None:
    with itproxy_env.http() as http:
        health = http.get("https://api.shop.test/api/health").json()
    assert health["db"] == "ok" and health["cache"] == "ok"
    assert health["secure"] is True, "Django sees the request as HTTPS (X-Forwarded-Proto)"


def test_containers_use_the_same_urls_as_production(itproxy_env: Env) -> None:
    worker = next(c.name for c in itproxy_env.apps["api"].info.containers if c.endpoint == "worker")
    script = (
        "import urllib.request as u\n"
        "print(u.urlopen('https://api.shop.test/api/health').status)\n"
        "print(u.urlopen('https://www.shop.test/').status)\n"
    )
    out = subprocess.run(["docker", "exec", worker, "python3", "-c", script], capture_output=True, text=True)
    assert out.stdout.split() == ["200", "200"], out.stderr


def test_the_front_end_signs_in_to_the_api_in_chromium(browser: Any, clean_data: Env) -> None:
    browser.get("https://www.shop.test/")
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys("wonderland")
    browser.find_element(By.ID, "go").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 15).until(lambda _: status.text.startswith(("signed in", "failed")))
    # CORS with credentials, CSRF and a Secure SameSite=None session cookie all held.
    assert status.text.startswith("signed in as alice"), status.text


def test_an_item_is_processed_by_the_worker(signed_in: Any) -> None:
    r = signed_in.post("https://api.shop.test/api/items", json={"name": "lamp"})
    assert r.status_code == 201, r.text
    item = r.json()["id"]
    deadline = time.monotonic() + 15
    while not signed_in.get(f"https://api.shop.test/api/items/{item}").json()["processed"]:
        assert time.monotonic() < deadline, "the worker did not process the item"
        time.sleep(0.1)


def test_each_test_starts_from_the_seeded_data(signed_in: Any) -> None:
    # The previous test's item is gone; the seeded user is there.
    assert signed_in.get("https://api.shop.test/api/items").json()["items"] == []
    assert signed_in.get("https://api.shop.test/api/me").json()["user"] == "alice"


def test_restarting_the_api_under_load_fails_no_request(itproxy_env: Env) -> None:
    stop = threading.Event()
    statuses: Counter[str] = Counter()
    instances: List[str] = []
    lock = threading.Lock()

    def client() -> None:
        with itproxy_env.http(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.get("https://api.shop.test/api/items")
                    outcome = str(r.status_code)
                    if r.status_code == 200:
                        with lock:
                            instances.append(r.json()["instance"])
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                with lock:
                    statuses[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        before = set(instances)
        itproxy_env.apps["api"].restart_and_wait(timeout=60)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=40)
    assert set(statuses) == {"200"}, statuses
    assert statuses["200"] > 50, statuses
    assert set(instances[-20:]).isdisjoint(before), "the new containers answer after the restart"
