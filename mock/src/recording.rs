//! The files of a recording: one JSON file per exchange, named by its order, method and path
//! (`0003-GET-v1-users.json`), readable and editable by hand. Bodies are kept as text when
//! they are UTF-8 (`body`), as base64 otherwise (`body_base64`), so a response is served back
//! byte for byte.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Request headers kept in a recording: what a mock may need to tell requests apart and what
/// `mock diff` sends again. Cookies and authorization are never written to files.
pub const KEPT_REQUEST_HEADERS: [&str; 3] = ["content-type", "accept", "accept-language"];

/// Response headers not kept: they describe the connection, or are recomputed when served.
const DROPPED_RESPONSE_HEADERS: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "te",
    "upgrade",
];

/// A recorded request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// `GET`, `POST`...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?` ("" when none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// The headers of [`KEPT_REQUEST_HEADERS`] it had, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(flatten)]
    pub body: Body,
}

/// A recorded response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResponse {
    /// The status.
    pub status: u16,
    /// The headers, in order, but those about the connection and the length.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    #[serde(flatten)]
    pub body: Body,
}

/// A body: text when it is UTF-8, base64 otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// The body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64 (when it is not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl Body {
    /// `bytes` as a recording keeps them.
    pub fn of(bytes: &[u8]) -> Body {
        // Control characters (but tab and line breaks) would take six bytes each as JSON text.
        let readable = |t: &str| {
            !t.chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        };
        match std::str::from_utf8(bytes) {
            Ok("") => Body::default(),
            Ok(text) if readable(text) => Body {
                body: Some(text.to_string()),
                body_base64: None,
            },
            _ => Body {
                body: None,
                body_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }

    /// The bytes (empty when the base64 is not valid: checked when the file is read).
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// One request and the response it got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// The request.
    pub request: RecordedRequest,
    /// The response.
    pub response: RecordedResponse,
}

impl RecordedRequest {
    /// The request as recorded from its parts: only [`KEPT_REQUEST_HEADERS`] are kept.
    pub fn new(method: &str, path_and_query: &str, headers: &http::HeaderMap, body: &[u8]) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let headers = headers
            .iter()
            .filter(|(n, _)| KEPT_REQUEST_HEADERS.contains(&n.as_str()))
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        RecordedRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body: Body::of(body),
        }
    }

    /// `METHOD /path?query`, as messages name it.
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

impl RecordedResponse {
    /// The response as recorded from its parts.
    pub fn new(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Self {
        let headers = headers
            .iter()
            .filter(|(n, _)| !DROPPED_RESPONSE_HEADERS.contains(&n.as_str()))
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        RecordedResponse {
            status,
            headers,
            body: Body::of(body),
        }
    }
}

/// Where a recording was made: the route and the target it forwarded to (`mock diff` replays
/// against it by default). Kept in `itproxy-mock.json` in the directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The route's host name.
    pub host: String,
    /// The target recorded, e.g. `http://127.0.0.1:8000`.
    pub target: String,
}

/// The name of the file that says where a recording was made.
pub const ORIGIN_FILE: &str = "itproxy-mock.json";

/// A recording directory and the exchanges in it, in their order.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The directory.
    pub dir: PathBuf,
    /// Where it was recorded, if it says.
    pub origin: Option<Origin>,
    /// Each exchange with its file (those read; a recorder does not keep what it saves).
    pub exchanges: Vec<(PathBuf, Exchange)>,
    /// The number the next saved exchange gets.
    next: u64,
}

/// The largest exchange file read.
pub const MAX_FILE: u64 = 256 * 1024 * 1024;

/// The number a file's name starts with (`0012-GET-x.json`: 12).
fn number_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes `bytes` to `path` through a new temporary file renamed over it: never through a
/// link someone left at either name (rename replaces a link, it does not follow it).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(io("write", &partial))?;
    file.write_all(bytes).map_err(io("write", &partial))?;
    drop(file);
    std::fs::rename(&partial, path).map_err(io("write", path))
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |error| Error::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

impl Recording {
    /// Reads every exchange file of `dir` (`NNNN-*.json`), in the order of their numbers.
    pub fn load(dir: &Path) -> Result<Recording, Error> {
        // Regular files only (not a FIFO or a link to a device).
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(io("read", dir))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| Some((number_of(&p)?, p)))
            .collect();
        files.sort();
        let next = files.last().map_or(1, |(n, _)| n.saturating_add(1));
        let mut exchanges = Vec::new();
        for (_, path) in files {
            let size = std::fs::metadata(&path).map_err(io("read", &path))?.len();
            if size > MAX_FILE {
                return Err(Error::Invalid {
                    path,
                    message: format!("it is {size} bytes; an exchange file may take {MAX_FILE}"),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
            let exchange: Exchange = serde_json::from_str(&text).map_err(|e| Error::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for body in [&exchange.request.body, &exchange.response.body] {
                if let Some(b64) = &body.body_base64 {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| Error::Invalid {
                            path: path.clone(),
                            message: format!("body_base64 is not base64: {e}"),
                        })?;
                }
            }
            exchanges.push((path, exchange));
        }
        let origin_path = dir.join(ORIGIN_FILE);
        let regular = std::fs::symlink_metadata(&origin_path).is_ok_and(|m| m.is_file());
        let origin = match regular
            .then(|| std::fs::read_to_string(&origin_path).ok())
            .flatten()
        {
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| Error::Invalid {
                path: origin_path,
                message: e.to_string(),
            })?),
            None => None,
        };
        Ok(Recording {
            dir: dir.to_path_buf(),
            origin,
            exchanges,
            next,
        })
    }

    /// Starts a recording in `dir` (created if needed; exchanges already there are kept and
    /// new ones numbered after them), saying where it is recorded from.
    pub fn create(dir: &Path, origin: Origin) -> Result<Recording, Error> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut recording = Recording::load(dir)?;
        let path = dir.join(ORIGIN_FILE);
        let text = serde_json::to_string_pretty(&origin).expect("an origin serializes");
        write_new(&path, (text + "\n").as_bytes())?;
        recording.origin = Some(origin);
        // What was there is numbered past; it need not stay in memory.
        recording.exchanges.clear();
        Ok(recording)
    }

    /// Writes `exchange` as the next file (not kept in memory).
    pub fn save(&mut self, exchange: &Exchange) -> Result<PathBuf, Error> {
        let name = format!(
            "{:04}-{}-{}.json",
            self.next,
            slug(&exchange.request.method),
            slug(&exchange.request.path)
        );
        let path = self.dir.join(name);
        let text = serde_json::to_string_pretty(exchange).expect("an exchange serializes");
        // Written whole under a temporary name first: a reader never sees half a file.
        write_new(&path, (text + "\n").as_bytes())?;
        self.next = self.next.saturating_add(1);
        Ok(path)
    }
}

/// A file-name-safe form of a method or path: letters, digits and `-`, at most 60.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 60 {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "root".to_string()
    } else {
        out.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_are_saved_as_numbered_readable_files_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin {
            host: "api.test".into(),
            target: "http://127.0.0.1:8000".into(),
        };
        let mut rec = Recording::create(dir.path(), origin.clone()).unwrap();
        let mut req_headers = http::HeaderMap::new();
        req_headers.insert("accept", "application/json".parse().unwrap());
        req_headers.insert("cookie", "session=secret".parse().unwrap());
        let mut resp_headers = http::HeaderMap::new();
        resp_headers.insert("content-type", "image/png".parse().unwrap());
        resp_headers.insert("content-length", "4".parse().unwrap());
        let exchange = Exchange {
            request: RecordedRequest::new("GET", "/v1/users?page=2", &req_headers, b""),
            response: RecordedResponse::new(200, &resp_headers, &[0x89, b'P', 0xff, 0]),
        };
        let path = rec.save(&exchange).unwrap();
        assert!(path.ends_with("0001-GET-v1-users.json"), "{path:?}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"query\": \"page=2\""), "{text}");
        assert!(!text.contains("secret"), "no cookie in files: {text}");
        assert!(text.contains("body_base64"), "{text}");
        rec.save(&exchange).unwrap();

        let back = Recording::load(dir.path()).unwrap();
        assert_eq!(back.origin, Some(origin));
        assert_eq!(back.exchanges.len(), 2);
        assert!(back.exchanges[1].0.ends_with("0002-GET-v1-users.json"));
        assert_eq!(back.exchanges[0].1, exchange);
        assert_eq!(
            back.exchanges[0].1.response.body.bytes(),
            [0x89, b'P', 0xff, 0]
        );
        assert_eq!(
            back.exchanges[0].1.response.headers,
            [("content-type".to_string(), "image/png".to_string())]
        );
    }

    #[test]
    fn a_bad_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0001-GET-x.json"), "{\"request\": 1}").unwrap();
        let err = Recording::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("0001-GET-x.json is not a recorded exchange"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("0001-GET-x.json"),
            r#"{"request":{"method":"GET","path":"/"},"response":{"status":200,"body_base64":"%%%"}}"#,
        )
        .unwrap();
        let err = Recording::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not base64"), "{err}");
        assert_eq!(slug("/v1/users/42/"), "v1-users-42");
        // Numbers past 9999 keep their order, and a resumed recording numbers after them.
        let dir = tempfile::tempdir().unwrap();
        let one = r#"{"request":{"method":"GET","path":"/"},"response":{"status":200}}"#;
        for name in [
            "9999-GET-root.json",
            "10000-GET-root.json",
            "5x-GET-root.json",
        ] {
            std::fs::write(dir.path().join(name), one).unwrap();
        }
        let back = Recording::load(dir.path()).unwrap();
        let names: Vec<_> = back
            .exchanges
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["9999-GET-root.json", "10000-GET-root.json"]);
        let mut rec = Recording::create(dir.path(), Origin::default()).unwrap();
        let saved = rec.save(&back.exchanges[0].1).unwrap();
        assert!(saved.ends_with("10001-GET-root.json"), "{saved:?}");
        assert_eq!(
            Body::of(b"\x01\x02").body,
            None,
            "control bytes go as base64"
        );
        assert_eq!(slug("/"), "root");
    }
}
