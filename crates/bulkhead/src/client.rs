//! A small HTTP client for the Bulkhead API, used by the operator commands and
//! by the setup phase of `bulkhead bench`.
//!
//! It speaks plain HTTP/1.1 over hyper-util's pooled client (no TLS: put a
//! TLS-terminating proxy in front of a remote server), sends and receives JSON,
//! and turns `application/problem+json` answers into [`ApiError`] so that the
//! user sees the server's `detail` next to the status code.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one request may take, connection included, before it is abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of every problem type the server sends; shown without it.
const PROBLEM_PREFIX: &str = "urn:bulkhead:problem:";

/// The most of a non-JSON error body that is shown to the user.
const MAX_BODY_EXCERPT: usize = 200;

/// A parsed `http://host[:port][/prefix]` server address.
///
/// INVARIANT: `prefix` is empty or starts with `/` and never ends with `/`, so
/// that `prefix + "/v1/..."` is always a well-formed origin-form path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `host:port` (port 80 if the URL has none; brackets kept for IPv6).
    authority: String,
    /// Path under which the API is mounted, e.g. `/bulkhead` behind a proxy.
    prefix: String,
}

impl BaseUrl {
    /// Parses a server URL such as `http://127.0.0.1:8700` (a trailing slash
    /// and a path prefix are tolerated).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |why: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| invalid("expected a URL like `http://127.0.0.1:8700`"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "https is not supported by this client: use `http://` (terminate TLS in a proxy in front of Bulkhead)",
                ));
            }
            Some(_) | None => {
                return Err(invalid("expected a URL like `http://127.0.0.1:8700`"));
            }
        }
        if uri.query().is_some() {
            return Err(invalid("a server URL cannot have a query string"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported: use a token",
            ));
        }
        let host = authority.host().to_owned();
        if host.is_empty() {
            return Err(invalid("the URL has no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            authority: format!("{host}:{port}"),
            prefix,
        })
    }

    /// `host:port`, suitable for a `Host` header and for connecting.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The origin-form request target for an API path: prefix + path.
    ///
    /// `path` may start with `/` or not; `"v1/tenants"` and `"/v1/tenants"`
    /// give the same result.
    pub fn path(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        format!("{}/{}", self.prefix, path)
    }

    /// The absolute URL of an API path.
    pub fn join(&self, path: &str) -> String {
        format!("http://{}{}", self.authority, self.path(path))
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// An error answer from the server (any non-2xx status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code.
    pub status: u16,
    /// The RFC 9457 problem type, e.g. `urn:bulkhead:problem:not-found`, when
    /// the server sent a problem document.
    pub problem_type: Option<String>,
    /// The problem's `detail` (or `title`), or an excerpt of a non-JSON body.
    pub detail: Option<String>,
}

impl ApiError {
    /// Builds the error for a non-2xx answer from its status and body.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let text_of = |v: &Value, key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        match parsed {
            Some(v) if v.is_object() => {
                let problem_type = text_of(&v, "type");
                let detail = text_of(&v, "detail")
                    .or_else(|| text_of(&v, "title"))
                    // Some error bodies are `{"error": "..."}`; show those too.
                    .or_else(|| text_of(&v, "error"))
                    .or_else(|| text_of(&v, "message"));
                Self {
                    status,
                    problem_type,
                    detail,
                }
            }
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let detail = (!text.is_empty()).then(|| excerpt(text, MAX_BODY_EXCERPT));
                Self {
                    status,
                    problem_type: None,
                    detail,
                }
            }
        }
    }

    /// The problem type without the `urn:bulkhead:problem:` prefix, or the
    /// status's reason phrase when the server sent no problem type.
    pub fn short_type(&self) -> String {
        match &self.problem_type {
            Some(t) => t.strip_prefix(PROBLEM_PREFIX).unwrap_or(t).to_owned(),
            None => StatusCode::from_u16(self.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_owned(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.short_type())?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl StdError for ApiError {}

/// Everything that can go wrong with a request.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with a non-2xx status.
    Api(ApiError),
    /// No connection could be made.
    Unreachable {
        /// The server URL as given by the user.
        url: String,
        /// The underlying cause, e.g. `Connection refused (os error 111)`.
        cause: String,
    },
    /// The connection broke during the request.
    Transport {
        /// The request URL.
        url: String,
        /// The underlying cause.
        cause: String,
    },
    /// The request took longer than [`REQUEST_TIMEOUT`].
    Timeout {
        /// The request URL.
        url: String,
    },
    /// The server answered 2xx with a body that is not JSON.
    BadResponse {
        /// The request URL.
        url: String,
        /// Why the body could not be used.
        cause: String,
    },
    /// The server URL given by the user cannot be used.
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The request could not be built (a bad token or path).
    InvalidRequest(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api(e) => e.fmt(f),
            Self::Unreachable { url, cause } => write!(
                f,
                "cannot reach Bulkhead at {url}: {cause} (is `bulkhead serve` running?)"
            ),
            Self::Transport { url, cause } => write!(f, "request to {url} failed: {cause}"),
            Self::Timeout { url } => write!(
                f,
                "request to {url} timed out after {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
            Self::BadResponse { url, cause } => {
                write!(f, "unexpected answer from {url}: {cause}")
            }
            Self::InvalidUrl { url, why } => write!(f, "invalid server URL `{url}`: {why}"),
            Self::InvalidRequest(why) => write!(f, "cannot build the request: {why}"),
        }
    }
}

// No `source()`: `Api` already displays the whole `ApiError`, and printing the
// error chain would repeat it.
impl StdError for ClientError {}

/// A JSON client for one Bulkhead server, optionally carrying a bearer token.
///
/// Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct ApiClient {
    /// Where the server is.
    base: BaseUrl,
    /// The URL exactly as the user gave it, for error messages.
    display_url: String,
    /// `Bearer <token>`, marked sensitive so it never shows in debug output.
    auth: Option<HeaderValue>,
    /// The pooled keep-alive HTTP/1.1 client.
    http: Client<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the server at `base_url` (`http://host:port`), sending
    /// `Authorization: Bearer <token>` when a token is given.
    pub fn new(base_url: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let base = BaseUrl::parse(base_url)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            display_url: base_url.trim().trim_end_matches('/').to_owned(),
            auth: token.map(bearer).transpose()?,
            http,
        })
    }

    /// The same server and connection pool with another bearer token.
    pub fn with_token(&self, token: &str) -> Result<Self, ClientError> {
        Ok(Self {
            auth: Some(bearer(token)?),
            ..self.clone()
        })
    }

    /// The parsed server address.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, Some(body), &[]).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, Some(body), &[]).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::PATCH, path, Some(body), &[]).await
    }

    /// `DELETE path`; a `204 No Content` answer gives `Value::Null`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None, &[]).await
    }

    /// Sends one request and parses the JSON answer; an empty 2xx body gives
    /// `Value::Null`. Extra headers (e.g. `If-Match`) are added as given.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Value, ClientError> {
        let url = self.base.join(path);
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header(ACCEPT, "application/json");
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                let bytes = serde_json::to_vec(v)
                    .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = builder
            .body(body)
            .map_err(|e| ClientError::InvalidRequest(format!("`{path}`: {e}")))?;

        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Unreachable {
                        url: self.display_url.clone(),
                        cause: cause_chain(&e),
                    }
                } else {
                    ClientError::Transport {
                        url: url.clone(),
                        cause: cause_chain(&e),
                    }
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    cause: cause_chain(&e),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: url.clone() })??;

        if !status.is_success() {
            return Err(ClientError::Api(ApiError::from_response(
                status.as_u16(),
                &bytes,
            )));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            url,
            cause: format!("the body is not JSON ({e})"),
        })
    }
}

/// `Bearer <token>` as a sensitive header value.
fn bearer(token: &str) -> Result<HeaderValue, ClientError> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
        ClientError::InvalidRequest("the token contains characters not allowed in a header".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The messages of an error's sources, joined by `: `, skipping the outermost
/// wrapper (hyper's "client error (Connect)" says nothing useful) and repeats.
pub fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = err.source();
    while let Some(e) = current {
        let msg = e.to_string();
        if !parts.iter().any(|p| p == &msg) {
            parts.push(msg);
        }
        current = e.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

/// At most `max` characters of `text`, with `…` when cut.
fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// Percent-encodes one path segment or query value (RFC 3986: everything but
/// unreserved characters), so user input such as an id cannot change the path.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]
mod tests {
    use super::*;

    fn check_join(base: &str, path: &str, expected: &str) {
        let base = BaseUrl::parse(base).unwrap();
        assert_eq!(base.join(path), expected, "join({path:?})");
    }

    #[test]
    fn joins_paths_onto_the_base_url() {
        check_join(
            "http://127.0.0.1:8700",
            "/v1/tenants",
            "http://127.0.0.1:8700/v1/tenants",
        );
        check_join(
            "http://127.0.0.1:8700/",
            "/v1/tenants",
            "http://127.0.0.1:8700/v1/tenants",
        );
        check_join(
            "http://127.0.0.1:8700//",
            "v1/tenants",
            "http://127.0.0.1:8700/v1/tenants",
        );
        check_join(
            "http://localhost",
            "/healthz",
            "http://localhost:80/healthz",
        );
        check_join(
            "http://h:1/api/",
            "/v1/x?limit=2",
            "http://h:1/api/v1/x?limit=2",
        );
        check_join("http://[::1]:8700", "/healthz", "http://[::1]:8700/healthz");
    }

    #[test]
    fn origin_form_path_keeps_the_prefix() {
        let base = BaseUrl::parse("http://h:9/bulkhead").unwrap();
        assert_eq!(base.path("/healthz"), "/bulkhead/healthz");
        assert_eq!(base.authority(), "h:9");
        assert_eq!(base.to_string(), "http://h:9/bulkhead");
    }

    #[test]
    fn rejects_unusable_urls() {
        for bad in [
            "https://h:1",
            "127.0.0.1:8700",
            "ftp://h",
            "http://h:1/?x=1",
            "",
            "http://u:p@h:1",
        ] {
            let err = BaseUrl::parse(bad).unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidUrl { .. }),
                "{bad:?} gave {err:?}"
            );
        }
        let msg = BaseUrl::parse("https://h:1").unwrap_err().to_string();
        assert!(msg.contains("https is not supported"), "{msg}");
    }

    #[test]
    fn parses_problem_documents() {
        let body = br#"{"type":"urn:bulkhead:problem:not-found","title":"Not Found","status":404,"detail":"tenant `x` does not exist"}"#;
        let e = ApiError::from_response(404, body);
        assert_eq!(
            e.problem_type.as_deref(),
            Some("urn:bulkhead:problem:not-found")
        );
        assert_eq!(e.detail.as_deref(), Some("tenant `x` does not exist"));
        assert_eq!(e.to_string(), "404 not-found: tenant `x` does not exist");
    }

    #[test]
    fn problem_without_detail_falls_back_to_title() {
        let body =
            br#"{"type":"urn:bulkhead:problem:conflict","title":"Version conflict","status":409}"#;
        assert_eq!(
            ApiError::from_response(409, body).to_string(),
            "409 conflict: Version conflict"
        );
    }

    #[test]
    fn foreign_problem_types_are_shown_whole() {
        let body = br#"{"type":"about:blank","title":"Too Many Requests"}"#;
        assert_eq!(
            ApiError::from_response(429, body).to_string(),
            "429 about:blank: Too Many Requests"
        );
    }

    #[test]
    fn non_json_errors_show_the_reason_and_an_excerpt() {
        assert_eq!(
            ApiError::from_response(502, b"").to_string(),
            "502 Bad Gateway"
        );
        assert_eq!(
            ApiError::from_response(500, b"  oops\n").to_string(),
            "500 Internal Server Error: oops"
        );
        let long = "é".repeat(500);
        let e = ApiError::from_response(500, long.as_bytes());
        assert_eq!(e.detail.unwrap().chars().count(), MAX_BODY_EXCERPT + 1);
        assert_eq!(ApiError::from_response(599, b"").to_string(), "599 error");
    }

    #[test]
    fn unreachable_message_names_the_url_and_the_fix() {
        let e = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            cause: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach Bulkhead at http://127.0.0.1:1: Connection refused (os error 111) (is `bulkhead serve` running?)"
        );
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("abc-DEF_1.2~"), "abc-DEF_1.2~");
        assert_eq!(encode("../admin"), "..%2Fadmin");
        assert_eq!(encode("a b?c=d&e#"), "a%20b%3Fc%3Dd%26e%23");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = ApiClient::new("http://127.0.0.1:1", Some("s3cret")).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn connection_refused_is_reported_as_unreachable() {
        // Bind then drop a listener to get a port that nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let c = ApiClient::new(&url, None).unwrap();
        let err = c.get("/healthz").await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(
            msg.starts_with(&format!("cannot reach Bulkhead at {url}: ")),
            "{msg}"
        );
        assert!(msg.ends_with("(is `bulkhead serve` running?)"), "{msg}");
    }
}
