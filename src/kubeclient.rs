//! The Kubernetes client every part of the agent uses: kube's API machinery
//! over a connection stack assembled here.
//!
//! Why not `kube::Client::try_from(config)`: its stack can also run kubeconfig
//! exec plugins and auth providers, and that code (with the JSONPath and regex
//! engines it brings) is linked whether or not any kubeconfig uses it: about
//! half a MiB of text, most of it resident in every agent, since the kernel
//! maps a binary's text in 64 KiB windows (README, Performance). In the
//! cluster an agent authenticates with its service-account token file; a
//! kubeconfig outside it may give a token, a token file or a client
//! certificate. Anything else fails at start and says what to use instead.
//! The cluster's CA is read once, at start: after a CA rotation, pods that use
//! in-cluster configuration are restarted (Kubernetes' rotation procedure says
//! so), and the agent is one of them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine;
use http::{HeaderValue, Request, header::AUTHORIZATION};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use kube::config::AuthInfo;
use kube::{Client, Config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// How long a token read from a file is used before the file is read again:
/// client-go's period, well inside a projected token's rotation (the kubelet
/// renews it at 80 % of its hour).
const TOKEN_FILE_PERIOD: Duration = Duration::from_secs(60);

/// The configuration from `kubeconfig` when given, else in-cluster (or
/// `$KUBECONFIG`, `~/.kube/config`, as kubectl would find it).
pub async fn config(kubeconfig: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig")?,
    };
    config.read_timeout = Some(crate::watches::READ_TIMEOUT);
    Ok(config)
}

/// A start-up request, repeated while the API server cannot be reached or
/// answers that it is overloaded or failing (a node booting, a control-plane
/// upgrade): waiting here beats exiting into the kubelet's crash-loop backoff,
/// and the error it would print would not be the agent's fault. Any other
/// answer (404, 403, a bad body) will not change by waiting and is returned.
pub async fn until_reachable<T, F>(what: &str, mut request: impl FnMut() -> F) -> kube::Result<T>
where
    F: Future<Output = kube::Result<T>>,
{
    let mut delay = Duration::from_secs(1);
    loop {
        match request().await {
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what}: waiting for the API server");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            answered => return answered,
        }
    }
}

/// The API server's clock, from the `Date` header of a request (whole
/// seconds, as HTTP and Kubernetes write times). A time compared with the
/// API server's own timestamps (a Node's creation) must come from its clock,
/// not this process's, which may be skewed. `None` when the server sent no
/// usable `Date`.
pub async fn server_time(client: &Client) -> kube::Result<Option<jiff::Timestamp>> {
    let request = Request::get("/version")
        .body(Body::empty())
        .map_err(kube::Error::HttpError)?;
    let response = client.send(request).await?;
    Ok(response
        .headers()
        .get(http::header::DATE)
        .and_then(|date| date.to_str().ok())
        .and_then(|date| {
            jiff::fmt::rfc2822::DateTimeParser::new()
                .parse_timestamp(date)
                .ok()
        }))
}

fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        // Connecting, TLS, timeouts: the connection, not the answer.
        kube::Error::Service(_) | kube::Error::HyperError(_) => true,
        _ => false,
    }
}

/// Why a configuration cannot give a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the kubeconfig's user authenticates with {0}, which carbon-kube does not run: \
         give it a token, a token file or a client certificate (a service account's token \
         from `kubectl create token`, for example)"
    )]
    UnsupportedAuth(&'static str),
    #[error(
        "insecure-skip-tls-verify is not supported: give the cluster's certificate-authority-data"
    )]
    Insecure,
    #[error("proxy-url is not supported: reach the API server directly")]
    Proxy,
    #[error(
        "the cluster has no certificate authority: give the kubeconfig's cluster a \
         certificate-authority or certificate-authority-data"
    )]
    NoCertificateAuthority,
    #[error("{what}: {reason}")]
    Credential { what: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
}

/// A client for `config`: its server, CA, credentials, timeouts, headers and
/// whether to retry 429s and 5xx (`config.default_retry`).
pub fn client(config: &Config) -> Result<Client, ClientError> {
    if config.proxy_url.is_some() {
        return Err(ClientError::Proxy);
    }
    let (token, identity) = credentials(&config.auth_info)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls(config, identity)?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = ServerName::try_from(name.clone())
            .map_err(|e| ClientError::Tls(format!("tls-server-name {name}: {e}")))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let mut connector =
        hyper_timeout::TimeoutConnector::new(https.enable_http1().wrap_connector(http));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);

    let headers = config
        .extra_headers_layer()
        .map_err(|e| ClientError::Tls(format!("impersonation headers: {e}")))?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(token.map(BearerLayer))
        .layer(headers)
        .map_err(BoxError::from)
        .service(http_client);
    Ok(ClientBuilder::new(service.boxed(), config.default_namespace.clone()).build())
}

/// A certificate chain and its key, from a kubeconfig user.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn credentials(auth: &AuthInfo) -> Result<(Option<Arc<Token>>, Option<Identity>), ClientError> {
    if auth.exec.is_some() {
        return Err(ClientError::UnsupportedAuth("an exec plugin"));
    }
    if auth.auth_provider.is_some() {
        return Err(ClientError::UnsupportedAuth("an auth provider"));
    }
    if auth.username.is_some() || auth.password.is_some() {
        return Err(ClientError::UnsupportedAuth("a username and password"));
    }
    let token = match (&auth.token, &auth.token_file) {
        (Some(token), _) => Some(Token::fixed(token.expose_secret())?),
        (None, Some(path)) => Some(Token::file(PathBuf::from(path))?),
        (None, None) => None,
    };
    let cert = data_or_file(
        "client-certificate",
        auth.client_certificate_data.as_deref(),
        auth.client_certificate.as_deref(),
    )?;
    let key = data_or_file(
        "client-key",
        auth.client_key_data.as_ref().map(|k| k.expose_secret()),
        auth.client_key.as_deref(),
    )?;
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(credential(
                "client-key",
                "missing beside client-certificate",
            ));
        }
        (None, Some(_)) => {
            return Err(credential(
                "client-certificate",
                "missing beside client-key",
            ));
        }
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| credential("client-certificate", e))?;
            if chain.is_empty() {
                return Err(credential("client-certificate", "no PEM certificate"));
            }
            let key =
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| credential("client-key", e))?;
            Some((chain, key))
        }
    };
    Ok((token.map(Arc::new), identity))
}

fn credential(what: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Credential {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// A kubeconfig's `<what>-data` (base64) or `<what>` (a file).
fn data_or_file(
    what: &str,
    data: Option<&str>,
    file: Option<&str>,
) -> Result<Option<Vec<u8>>, ClientError> {
    match (data, file) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|e| credential(&format!("{what}-data"), e)),
        (None, Some(path)) => std::fs::read(path)
            .map(Some)
            .map_err(|e| credential(&format!("{what} {path}"), e)),
        (None, None) => Ok(None),
    }
}

fn tls(config: &Config, identity: Option<Identity>) -> Result<rustls::ClientConfig, ClientError> {
    if config.accept_invalid_certs {
        return Err(ClientError::Insecure);
    }
    let mut roots = rustls::RootCertStore::empty();
    for der in config.root_cert.iter().flatten() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| ClientError::Tls(format!("certificate authority: {e}")))?;
    }
    if roots.is_empty() && config.cluster_url.scheme_str() == Some("https") {
        return Err(ClientError::NoCertificateAuthority);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| credential("client-key", e)),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The bearer token a request carries: fixed, or read from a file that is
/// read again every [`TOKEN_FILE_PERIOD`] (the kubelet rotates projected
/// service-account tokens in place).
struct Token {
    file: Option<PathBuf>,
    current: Mutex<(HeaderValue, Instant)>,
}

impl Token {
    fn fixed(token: &str) -> Result<Self, ClientError> {
        Ok(Self {
            file: None,
            current: Mutex::new((header(token)?, Instant::now())),
        })
    }

    fn file(path: PathBuf) -> Result<Self, ClientError> {
        let value = read_token(&path)?;
        Ok(Self {
            file: Some(path),
            current: Mutex::new((value, Instant::now())),
        })
    }

    /// The header to send now. A file that cannot be read keeps the last
    /// good token (the API server says when it expires).
    fn header(&self) -> HeaderValue {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.file
            && current.1.elapsed() >= TOKEN_FILE_PERIOD
        {
            match read_token(path) {
                Ok(value) => current.0 = value,
                Err(e) => tracing::warn!(error = %e, "keeping the last token"),
            }
            current.1 = Instant::now();
        }
        current.0.clone()
    }
}

fn read_token(path: &Path) -> Result<HeaderValue, ClientError> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| credential(&format!("token-file {}", path.display()), e))?;
    header(token.trim())
}

fn header(token: &str) -> Result<HeaderValue, ClientError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| credential("token", "not a valid HTTP header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

#[derive(Clone)]
struct BearerLayer(Arc<Token>);

impl<S> Layer<S> for BearerLayer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Bearer<S> {
        Bearer {
            inner,
            token: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Bearer<S> {
    inner: S,
    token: Arc<Token>,
}

impl<S, B> Service<Request<B>> for Bearer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .headers_mut()
            .insert(AUTHORIZATION, self.token.header());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests;
