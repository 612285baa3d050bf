//! What changed between a recorded response and the live backend's answer to the same
//! request: the status, the headers a client depends on, and the JSON body's shape (fields
//! added or gone, types changed; values are data and may change freely). The early warning
//! that an API changed under a UI built against its recording.

use serde_json::Value;

/// Headers whose values change on every response: their changes are not reported.
const VOLATILE: [&str; 10] = [
    "date",
    "server",
    "etag",
    "last-modified",
    "age",
    "expires",
    "set-cookie",
    "x-request-id",
    "x-runtime",
    "via",
];

/// Headers about the connection or the framing, not the API: never compared.
const CONNECTION: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "upgrade",
];

/// Headers whose value matters to a client, not only their presence.
const COMPARED_VALUES: [&str; 4] = [
    "content-type",
    "location",
    "cache-control",
    "content-encoding",
];

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The status is another.
    Status {
        /// Recorded.
        was: u16,
        /// Live.
        now: u16,
    },
    /// A header is new, gone, or (for the headers clients read) has another value.
    Header {
        /// Its name.
        name: String,
        /// Recorded value (none: it is new).
        was: Option<String>,
        /// Live value (none: it is gone).
        now: Option<String>,
    },
    /// A field of the JSON body is new, gone, or of another type (`$.users[].email`).
    Field {
        /// Where, as a JSON path (`[]` for every element of an array).
        path: String,
        /// Recorded type (none: it is new).
        was: Option<&'static str>,
        /// Live type (none: it is gone).
        now: Option<&'static str>,
    },
    /// The body was JSON and is no more, or the other way round.
    BodyKind {
        /// Recorded: JSON or not.
        was_json: bool,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Status { was, now } => write!(f, "status {was} -> {now}"),
            Change::Header {
                name,
                was: None,
                now: Some(v),
            } => write!(f, "header {name} added: {v}"),
            Change::Header {
                name,
                was: Some(v),
                now: None,
            } => write!(f, "header {name} removed (was {v})"),
            Change::Header { name, was, now } => write!(
                f,
                "header {name}: {} -> {}",
                was.as_deref().unwrap_or("-"),
                now.as_deref().unwrap_or("-")
            ),
            Change::Field {
                path,
                was: None,
                now: Some(t),
            } => write!(f, "field {path} added ({t})"),
            Change::Field {
                path,
                was: Some(t),
                now: None,
            } => write!(f, "field {path} removed (was {t})"),
            Change::Field { path, was, now } => write!(
                f,
                "field {path}: {} -> {}",
                was.unwrap_or("-"),
                now.unwrap_or("-")
            ),
            Change::BodyKind { was_json: true } => write!(f, "body: was JSON, is not any more"),
            Change::BodyKind { was_json: false } => write!(f, "body: is JSON now, was not"),
        }
    }
}

/// The changes from the recorded response (`status`, `headers`, `body`) to the live one.
pub fn compare(
    was: (u16, &[(String, String)], &[u8]),
    now: (u16, &[(String, String)], &[u8]),
) -> Vec<Change> {
    let mut changes = Vec::new();
    if was.0 != now.0 {
        changes.push(Change::Status {
            was: was.0,
            now: now.0,
        });
    }
    let value = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut names: Vec<String> = was
        .1
        .iter()
        .chain(now.1)
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| !VOLATILE.contains(&n.as_str()) && !CONNECTION.contains(&n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let (a, b) = (value(was.1, &name), value(now.1, &name));
        let differs = match (&a, &b) {
            (Some(a), Some(b)) => COMPARED_VALUES.contains(&name.as_str()) && a != b,
            (None, None) => false,
            _ => true,
        };
        if differs {
            changes.push(Change::Header {
                name,
                was: a,
                now: b,
            });
        }
    }
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    match (parse(was.2), parse(now.2)) {
        (Some(a), Some(b)) => {
            let mut fields = Vec::new();
            shape(&a, &b, "$", &mut fields);
            // By path, whatever order the objects' keys came in.
            fields.sort_by(|x, y| match (x, y) {
                (Change::Field { path: p, .. }, Change::Field { path: q, .. }) => p.cmp(q),
                _ => std::cmp::Ordering::Equal,
            });
            changes.extend(fields);
        }
        (Some(_), None) => changes.push(Change::BodyKind { was_json: true }),
        (None, Some(_)) if !was.2.is_empty() => changes.push(Change::BodyKind { was_json: false }),
        _ => {}
    }
    changes
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Compares the shapes of `a` (recorded) and `b` (live) at `path`.
fn shape(a: &Value, b: &Value, path: &str, changes: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(vb) => shape(va, vb, &p, changes),
                    None => changes.push(Change::Field {
                        path: p,
                        was: Some(kind(va)),
                        now: None,
                    }),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    changes.push(Change::Field {
                        path: format!("{path}.{k}"),
                        was: None,
                        now: Some(kind(vb)),
                    });
                }
            }
        }
        // Elements are compared by the first of each: arrays of one shape are the norm.
        (Value::Array(x), Value::Array(y)) => {
            if let (Some(ea), Some(eb)) = (x.first(), y.first()) {
                shape(ea, eb, &format!("{path}[]"), changes);
            }
        }
        // null stands in for any type in a recording (an optional field that was empty).
        (Value::Null, _) | (_, Value::Null) => {}
        _ if kind(a) != kind(b) => changes.push(Change::Field {
            path: path.to_string(),
            was: Some(kind(a)),
            now: Some(kind(b)),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_renamed_field_a_new_type_and_a_status_are_reported() {
        let was = br#"{"users":[{"id":1,"email":"a@x","tags":["x"]}],"total":1,"next":null}"#;
        let now = br#"{"users":[{"id":"1","mail":"a@x","tags":["y","z"]}],"total":7,"next":"/p2"}"#;
        let changes = compare(
            (
                200,
                &h(&[("Content-Type", "application/json"), ("Date", "x")]),
                was,
            ),
            (
                201,
                &h(&[
                    ("content-type", "application/json; charset=utf-8"),
                    ("date", "y"),
                ]),
                now,
            ),
        );
        let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            text,
            [
                "status 200 -> 201",
                "header content-type: application/json -> application/json; charset=utf-8",
                "field $.users[].email removed (was string)",
                "field $.users[].id: number -> string",
                "field $.users[].mail added (string)",
            ]
        );
    }

    #[test]
    fn the_same_shape_with_other_values_is_no_change() {
        let changes = compare(
            (
                200,
                &h(&[("x-version", "1")]),
                br#"{"a":[1,2],"b":{"c":"d"}}"#,
            ),
            (200, &h(&[("x-version", "2")]), br#"{"a":[],"b":{"c":"e"}}"#),
        );
        assert!(changes.is_empty(), "{changes:?}");
        let gone = compare(
            (200, &[], b"{}"),
            (
                200,
                &h(&[("x-new", "1"), ("Connection", "close")]),
                b"<html>",
            ),
        );
        assert_eq!(gone.len(), 2, "{gone:?}");
    }
}
