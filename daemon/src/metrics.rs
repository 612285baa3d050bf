//! The Prometheus text exposition (`GET /v1/metrics`, and `/metrics` on the dashboard's
//! name): requests by route and status class, latency histograms, upstream failures, DNS
//! queries by type and outcome, certificates issued, route swaps. Each subsystem counts its
//! own (the router's inspector, the DNS server, the certificate resolver, the state); this
//! module only reads and writes them out.

use std::fmt::Write as _;
use std::sync::Arc;

use itproxy_dns::counts::QueryCounts;
use itproxy_router::inspect::{Histogram, LATENCY_BUCKETS};
use itproxy_router::Inspector;

use crate::state::StateHandle;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the metrics come from.
pub struct Metrics {
    /// Requests, by route.
    pub inspector: Arc<Inspector>,
    /// DNS queries; none without a DNS listener.
    pub dns: Option<Arc<QueryCounts>>,
    /// Certificates issued.
    pub certificates: Arc<itproxy_certs::CertResolver>,
    /// Route swaps and the routes in force.
    pub state: Arc<StateHandle>,
}

impl Metrics {
    /// Every metric, in the text format.
    pub async fn render(&self) -> String {
        let mut out = String::new();
        let routes = self.inspector.route_counts();
        family(
            &mut out,
            "itproxy_requests_total",
            "counter",
            "Requests answered, by route and status class (none: no response was sent).",
        );
        for (route, counts) in &routes {
            for (class, n) in counts.by_class.iter().enumerate() {
                if *n > 0 {
                    let class = match class {
                        0 => "none".to_string(),
                        c => format!("{c}xx"),
                    };
                    sample(
                        &mut out,
                        "itproxy_requests_total",
                        &[("route", label_route(route)), ("class", &class)],
                        *n as f64,
                    );
                }
            }
        }
        family(
            &mut out,
            "itproxy_upstream_errors_total",
            "counter",
            "Requests whose upstream failed (refused, timed out, no valid response): answered 502/504.",
        );
        for (route, counts) in &routes {
            sample(
                &mut out,
                "itproxy_upstream_errors_total",
                &[("route", label_route(route))],
                counts.upstream_failures as f64,
            );
        }
        family(
            &mut out,
            "itproxy_request_duration_seconds",
            "histogram",
            "Time from a request's complete head to the end of its response, by route.",
        );
        for (route, counts) in &routes {
            histogram(
                &mut out,
                "itproxy_request_duration_seconds",
                label_route(route),
                &counts.duration,
            );
        }
        family(
            &mut out,
            "itproxy_upstream_duration_seconds",
            "histogram",
            "Time from asking the upstream to its response head, by route.",
        );
        for (route, counts) in &routes {
            if counts.upstream_duration.count > 0 {
                histogram(
                    &mut out,
                    "itproxy_upstream_duration_seconds",
                    label_route(route),
                    &counts.upstream_duration,
                );
            }
        }
        family(
            &mut out,
            "itproxy_dns_queries_total",
            "counter",
            "DNS queries, by record type and outcome (answer, nodata, nxdomain, forwarded, refused, error, dropped).",
        );
        if let Some(dns) = &self.dns {
            for (rtype, outcome, n) in dns.counted() {
                sample(
                    &mut out,
                    "itproxy_dns_queries_total",
                    &[("type", rtype), ("answer", outcome.as_str())],
                    n as f64,
                );
            }
        }
        family(
            &mut out,
            "itproxy_certificates_issued_total",
            "counter",
            "TLS leaf certificates issued by the local CA since the start.",
        );
        sample(
            &mut out,
            "itproxy_certificates_issued_total",
            &[],
            self.certificates.issued() as f64,
        );
        family(
            &mut out,
            "itproxy_route_swaps_total",
            "counter",
            "Route tables published since the start (route changes, apps and containers coming and going, reloads).",
        );
        sample(
            &mut out,
            "itproxy_route_swaps_total",
            &[],
            self.state.swaps() as f64,
        );
        family(&mut out, "itproxy_routes", "gauge", "Routes in force.");
        let in_force = self.state.read(|s| s.route_count()).await;
        sample(&mut out, "itproxy_routes", &[], in_force as f64);
        out
    }
}

/// The route label: the host name, or `-` for requests no route took.
fn label_route(route: &str) -> &str {
    if route.is_empty() {
        "-"
    } else {
        route
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn histogram(out: &mut String, name: &str, route: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
        cumulative += n;
        let le = bound.to_string();
        sample(
            out,
            &format!("{name}_bucket"),
            &[("route", route), ("le", &le)],
            cumulative as f64,
        );
    }
    sample(
        out,
        &format!("{name}_bucket"),
        &[("route", route), ("le", "+Inf")],
        h.count as f64,
    );
    sample(out, &format!("{name}_sum"), &[("route", route)], h.sum);
    sample(
        out,
        &format!("{name}_count"),
        &[("route", route)],
        h.count as f64,
    );
}

/// A label value as the text format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_histograms_are_written_as_the_text_format_says() {
        let mut out = String::new();
        sample(&mut out, "x_total", &[("route", "a\"b\\c\nd")], 3.0);
        assert_eq!(out, "x_total{route=\"a\\\"b\\\\c\\nd\"} 3\n");
        let mut h = Histogram::default();
        h.buckets[0] = 2;
        h.buckets[2] = 1;
        h.buckets[LATENCY_BUCKETS.len()] = 1;
        h.count = 4;
        h.sum = 40.5;
        let mut out = String::new();
        histogram(&mut out, "d", "api.test", &h);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "d_bucket{route=\"api.test\",le=\"0.0005\"} 2");
        assert_eq!(lines[2], "d_bucket{route=\"api.test\",le=\"0.0025\"} 3");
        assert_eq!(
            lines[LATENCY_BUCKETS.len() - 1],
            "d_bucket{route=\"api.test\",le=\"30\"} 3"
        );
        assert_eq!(
            lines[LATENCY_BUCKETS.len()],
            "d_bucket{route=\"api.test\",le=\"+Inf\"} 4"
        );
        assert_eq!(
            lines[LATENCY_BUCKETS.len() + 1],
            "d_sum{route=\"api.test\"} 40.5"
        );
    }
}
