//! The one way providers talk HTTP: a bounded GET that turns every failure
//! into a [`ProviderError`] without ever echoing a credential.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use super::ProviderError;

const USER_AGENT: &str = concat!(
    "carbon-kube/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/carbon-kube/carbon-kube)"
);

/// A redirect chain longer than this is a misconfiguration, not an API.
const MAX_REDIRECTS: usize = 3;

/// A credential. It prints as `[redacted]` however it is formatted, so it can
/// sit in config structs that are logged with `{:?}`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Reads a secret mounted as a file (Kubernetes Secret volume). The
    /// trailing newline editors and `echo` add is not part of the key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SecretError> {
        use std::io::Read;
        let path = path.as_ref();
        let read_error = |source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Bounded: a path that is not a small file (a device, a log file
        // mounted by mistake) must not hang or exhaust the agent at start.
        let mut raw = String::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            .take(MAX_SECRET_BYTES + 1)
            .read_to_string(&mut raw)
            .map_err(read_error)?;
        if raw.len() as u64 > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let value = raw.trim_end();
        if value.is_empty() {
            return Err(SecretError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(value.to_string()))
    }

    /// The raw value, for building a request header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a secret file could not be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("secret file {} is larger than {MAX_SECRET_BYTES} bytes; is it the right file?", path.display())]
    TooLarge { path: PathBuf },
}

/// API keys and passwords are a few hundred bytes at most.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// How a request authenticates. Every variant marks its header sensitive so
/// that hyper never logs it.
pub enum Auth<'a> {
    None,
    Header {
        name: &'static str,
        value: &'a Secret,
    },
    Bearer(&'a Secret),
    Basic {
        username: &'a str,
        password: &'a Secret,
    },
}

/// Shared HTTP client with the per-request bounds every provider gets.
#[derive(Clone)]
pub struct HttpClient {
    /// A client that failed to build (no usable roots, say) makes every
    /// request fail as a transport error instead of crashing the agent.
    inner: Result<reqwest::Client, Arc<str>>,
    timeout: Duration,
    max_bytes: usize,
}

impl HttpClient {
    pub fn new(timeout: Duration, max_response_bytes: usize) -> Self {
        // reqwest is built with `rustls-no-provider` and panics in `build()`
        // when no process-wide provider exists. main installs ring first; this
        // keeps tests and other embedders from hitting the panic. An Err only
        // means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let inner = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(timeout)
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| Arc::from(error_chain(&e.without_url())));
        Self {
            inner,
            timeout,
            max_bytes: max_response_bytes,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GETs `url` and parses the body as JSON, within the time and size bounds.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        auth: Auth<'_>,
    ) -> Result<T, ProviderError> {
        let client = self
            .inner
            .as_ref()
            .map_err(|e| ProviderError::Transport(format!("HTTP client unavailable: {e}")))?;
        let shown = redacted(&url);
        let request = client
            .get(url)
            .header(header::ACCEPT, "application/json, application/geo+json")
            .headers(auth_headers(&auth)?);
        match tokio::time::timeout(self.timeout, self.exchange(request, &shown)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout(self.timeout)),
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        shown: &str,
    ) -> Result<T, ProviderError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| self.request_error(shown, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, response.headers(), Timestamp::now()));
        }
        // Content-Length only lets us refuse early; the streaming check below
        // is the bound, because chunked or lying responses have none.
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes as u64)
        {
            return Err(ProviderError::TooLarge(self.max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.body_error(shown, e))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(ProviderError::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Malformed(format!("GET {shown}: {e}")))
    }

    fn request_error(&self, shown: &str, err: reqwest::Error) -> ProviderError {
        if err.is_timeout() {
            return ProviderError::Timeout(self.timeout);
        }
        ProviderError::Transport(format!("GET {shown}: {}", error_chain(&err.without_url())))
    }

    /// A body that ends before its declared length is a truncated document,
    /// which the caller should treat like any other unparseable body.
    fn body_error(&self, shown: &str, err: reqwest::Error) -> ProviderError {
        if err.is_timeout() {
            return ProviderError::Timeout(self.timeout);
        }
        let incomplete = err.is_body() || err.is_decode();
        let detail = error_chain(&err.without_url());
        if incomplete {
            ProviderError::Malformed(format!("GET {shown}: body incomplete: {detail}"))
        } else {
            ProviderError::Transport(format!("GET {shown}: {detail}"))
        }
    }
}

/// `base` joined with `path` and `query`, percent-encoded. `base` may or may
/// not end in `/`; configured values come both ways.
pub fn endpoint(base: &str, path: &str, query: &[(&str, &str)]) -> Result<Url, ProviderError> {
    let joined = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let mut url = Url::parse(&joined)
        .map_err(|e| ProviderError::Transport(format!("invalid URL {joined:?}: {e}")))?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// The URL as it may appear in errors and logs: no userinfo, no query.
pub fn redacted(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?"));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// True when `candidate` is served by the same scheme, host and port as
/// `base`. Guards against following links that responses hand us.
pub fn same_origin(base: &Url, candidate: &Url) -> bool {
    base.scheme() == candidate.scheme()
        && base.host_str() == candidate.host_str()
        && base.port_or_known_default() == candidate.port_or_known_default()
}

/// Redirects are followed only within one origin: reqwest strips
/// `Authorization` on cross-host redirects but not custom headers such as
/// Electricity Maps' `auth-token`.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        match first {
            Some(_) if attempt.previous().len() > MAX_REDIRECTS => {
                attempt.error("too many redirects")
            }
            Some(first) if same_origin(&first, attempt.url()) => attempt.follow(),
            _ => attempt.stop(),
        }
    })
}

fn auth_headers(auth: &Auth<'_>) -> Result<HeaderMap, ProviderError> {
    let mut headers = HeaderMap::new();
    let (name, value) = match auth {
        Auth::None => return Ok(headers),
        Auth::Header { name, value } => (
            header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProviderError::NotConfigured("invalid credential header name"))?,
            value.expose().to_string(),
        ),
        Auth::Bearer(token) => (header::AUTHORIZATION, format!("Bearer {}", token.expose())),
        Auth::Basic { username, password } => (
            header::AUTHORIZATION,
            format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{}", password.expose()))
            ),
        ),
    };
    // The parse error text never includes the value, and neither do we.
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        ProviderError::NotConfigured("credential contains characters not allowed in an HTTP header")
    })?;
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(headers)
}

/// Maps a non-2xx status; `now` only matters for an HTTP-date Retry-After.
pub fn status_error(status: StatusCode, headers: &HeaderMap, now: Timestamp) -> ProviderError {
    match status.as_u16() {
        code @ (401 | 403) => ProviderError::Unauthorized(code),
        429 => ProviderError::RateLimited {
            retry_after: headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now)),
        },
        code => ProviderError::Status(code),
    }
}

/// Retry-After is either delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// The error and its causes on one line: reqwest's own Display stops at the
/// outermost layer ("error sending request"), which explains nothing.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn secret_files_are_trimmed_and_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("carbon-kube-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "abc123");

        std::fs::write(&file, "\n").unwrap();
        let empty = Secret::from_file(&file).unwrap_err().to_string();
        assert!(
            empty.contains("token") && empty.contains("empty"),
            "{empty}"
        );

        let missing = Secret::from_file(dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");

        // A device or a huge file is refused after a bounded read, not read forever.
        let endless = Secret::from_file("/dev/zero").unwrap_err().to_string();
        assert!(endless.contains("larger than"), "{endless}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_are_joined_encoded_and_redacted() {
        let url = endpoint(
            "https://api.example.org/v3/",
            "/carbon-intensity/latest",
            &[("zone", "US-CAL-CISO")],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.example.org/v3/carbon-intensity/latest?zone=US-CAL-CISO"
        );
        let odd = endpoint("http://u:p@127.0.0.1:8080", "x", &[("region", "A B&C")]).unwrap();
        assert_eq!(odd.query(), Some("region=A+B%26C"));
        assert_eq!(redacted(&odd), "http://127.0.0.1:8080/x");
        assert!(endpoint("not a url", "x", &[]).is_err());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let base = Url::parse("https://api.weather.gov").unwrap();
        assert!(same_origin(
            &base,
            &Url::parse("https://api.weather.gov:443/gridpoints/X/1,2").unwrap()
        ));
        assert!(!same_origin(
            &base,
            &Url::parse("http://api.weather.gov/x").unwrap()
        ));
        assert!(!same_origin(
            &base,
            &Url::parse("https://evil.example/x").unwrap()
        ));
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let now: Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            status_error(StatusCode::UNAUTHORIZED, &none, now),
            ProviderError::Unauthorized(401)
        );
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, &none, now),
            ProviderError::Unauthorized(403)
        );
        assert_eq!(
            status_error(StatusCode::BAD_GATEWAY, &none, now).outcome(),
            "server_error"
        );
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, &none, now).outcome(),
            "client_error"
        );

        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(
            status_error(StatusCode::TOO_MANY_REQUESTS, &headers, now),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(120))
            }
        );
        assert_eq!(
            status_error(StatusCode::TOO_MANY_REQUESTS, &none, now),
            ProviderError::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now: Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn auth_headers_are_sensitive() {
        let secret = Secret::new("tok".into());
        let headers = auth_headers(&Auth::Header {
            name: "auth-token",
            value: &secret,
        })
        .unwrap();
        assert!(headers["auth-token"].is_sensitive());
        let bearer = auth_headers(&Auth::Bearer(&secret)).unwrap();
        assert_eq!(bearer[header::AUTHORIZATION], "Bearer tok");
        assert!(bearer[header::AUTHORIZATION].is_sensitive());
        // RFC 7617's example.
        let password = Secret::new("open sesame".into());
        let basic = auth_headers(&Auth::Basic {
            username: "Aladdin",
            password: &password,
        })
        .unwrap();
        assert_eq!(
            basic[header::AUTHORIZATION],
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert!(basic[header::AUTHORIZATION].is_sensitive());
        let bad = Secret::new("line\nbreak".into());
        let err = auth_headers(&Auth::Bearer(&bad)).unwrap_err().to_string();
        assert!(!err.contains("line"), "{err}");
    }
}
