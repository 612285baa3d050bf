"""What went through the proxy, seen three ways: the dashboard at https://itproxy.test/ in
Chromium (live, detail on click), the inspector from Python, and /metrics read by Prometheus'
own text-format parser."""

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import serve

ARTIFACTS = Path(__file__).resolve().parents[3] / "target" / "screenshots"


def orders(h):
    return 200, {"Content-Type": "application/json", "X-Served-By": "orders-dev"}, b'{"orders": []}'


def test_the_dashboard_shows_a_request_seconds_after_it_happens(browser, itproxy_env, itproxy_route):
    for port in serve(orders):
        itproxy_route("orders", f"localhost:{port}")
        browser.get(itproxy_env.url("itproxy"))
        WebDriverWait(browser, 15).until(lambda b: "on" in b.find_element(By.ID, "live").get_attribute("class").split())
        # The routes table lists the route, with its source.
        WebDriverWait(browser, 15).until(lambda b: "orders.test" in b.find_element(By.ID, "routes").text)
        # An app's route shows the app's state as its health.
        routes = browser.find_element(By.ID, "routes").text
        assert any(line.startswith("api.test") and "app api ready" in line for line in routes.splitlines()), routes

        with itproxy_env.http() as http:
            r = http.get(itproxy_env.url("orders", "/v1/orders?page=2"), headers={"X-Trace": "trace-42"})
        assert r.status_code == 200

        def row(b):
            for tr in b.find_elements(By.CSS_SELECTOR, "#requests tbody tr"):
                if "/v1/orders?page=2" in tr.text:
                    return tr
            return None

        tr = WebDriverWait(browser, 10).until(row)
        assert "orders.test" in tr.text and "200" in tr.text and "GET" in tr.text
        tr.click()
        detail = browser.find_element(By.ID, "detail")
        WebDriverWait(browser, 5).until(lambda b: detail.is_displayed() and "trace-42" in detail.text)
        assert "x-served-by" in detail.text.lower() and "orders-dev" in detail.text
        assert f"http://localhost:{port}" in detail.text or f"127.0.0.1:{port}" in detail.text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


def test_a_hostile_target_is_shown_as_text_not_run(browser, itproxy_env, itproxy_route):
    for port in serve(orders):
        itproxy_route("orders", f"localhost:{port}")
        browser.get(itproxy_env.url("itproxy"))
        WebDriverWait(browser, 15).until(lambda b: "on" in b.find_element(By.ID, "live").get_attribute("class").split())
        with itproxy_env.http() as http:
            http.get(itproxy_env.url("orders", "/x?<img src=x onerror=document.title='owned'>"))
        WebDriverWait(browser, 10).until(lambda b: "onerror" in b.find_element(By.ID, "requests").text)
        assert browser.title == "itproxy"
        assert not browser.find_elements(By.CSS_SELECTOR, "#requests img")


def test_the_inspector_and_metrics_count_what_was_sent(itproxy_env, itproxy_route):
    for port in serve(orders):
        itproxy_route("orders", f"localhost:{port}")
        before = itproxy_env.requests(route="orders")
        since = before[-1]["id"] if before else 0
        with itproxy_env.http() as http:
            for i in range(3):
                assert http.get(itproxy_env.url("orders", f"/o/{i}")).status_code == 200
        seen = itproxy_env.requests(route="orders", since=since)
        assert [r["target"] for r in seen] == ["/o/0", "/o/1", "/o/2"]
        assert all(r["route"] == "orders.test" and r["status"] == 200 for r in seen)

        families = {f.name: f for f in text_string_to_metric_families(itproxy_env.metrics())}
        requests = {(s.labels["route"], s.labels["class"]): s.value
                    for s in families["itproxy_requests"].samples if s.name == "itproxy_requests_total"}
        assert requests[("orders.test", "2xx")] >= 3
        buckets = [s for s in families["itproxy_request_duration_seconds"].samples
                   if s.labels.get("route") == "orders.test" and s.name.endswith("_bucket")]
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value >= 3
        assert families["itproxy_certificates_issued"].samples[0].value >= 1
        assert families["itproxy_route_swaps"].samples[0].value >= 1
        itproxy_env.resolve("orders")
        after = {f.name: f for f in text_string_to_metric_families(itproxy_env.metrics())}
        answers = {(s.labels["type"], s.labels["answer"]): s.value for s in after["itproxy_dns_queries"].samples}
        assert answers.get(("A", "answer"), 0) >= 1, answers
