//! The agent's one error type. Each variant has a short, bounded
//! [`Error::metric_label`] for the error counters, so a dashboard can tell a
//! conflict from a timeout without parsing messages.

use crate::power::PowerError;

/// A setting that cannot be used, with the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: --{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Host(#[from] PowerError),
    /// A round that did not finish in time: a request hangs.
    #[error("the round did not finish within {0:?}; abandoned, the next starts afresh")]
    Stuck(std::time::Duration),
}

impl Error {
    /// A short, static label for the `kind` of the error counters.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Host(_) => "host",
            Self::Stuck(_) => "timeout",
            Self::Kube(kube::Error::Api(status)) => match status.code {
                401 | 403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                500.. => "server_error",
                _ => "client_error",
            },
            Self::Kube(kube::Error::HyperError(_) | kube::Error::Service(_)) => "transport",
            Self::Kube(kube::Error::SerdeError(_)) => "malformed",
            Self::Kube(_) => "kube",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        let status = kube::core::Status::failure("m", "r").with_code(code);
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn labels_are_short_and_bounded() {
        let cases = [
            (api(409), "conflict"),
            (api(404), "not_found"),
            (api(403), "forbidden"),
            (api(429), "throttled"),
            (api(503), "server_error"),
            (api(400), "client_error"),
            (
                ConfigError::new("pue", "must be at least 1").into(),
                "config",
            ),
            (PowerError::HostInfo("no /proc".into()).into(), "host"),
        ];
        for (error, label) in cases {
            assert_eq!(error.metric_label(), label, "{error}");
        }
        assert_eq!(
            Error::from(ConfigError::new("pue", "must be at least 1")).to_string(),
            "invalid configuration: --pue: must be at least 1"
        );
    }
}
