//! An API server for unit tests, after kube's documented mock pattern: a
//! `tower_test` service pair makes a real [`kube::Client`], and the test
//! answers each request the code under test makes, in the order it expects,
//! checking method and path and reading the body. A request that does not
//! come, or comes out of order, fails the test.

use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use serde::Serialize;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// How long a test waits for a request. Tests run on a paused clock, so when
/// the code under test has nothing left to do this passes at once.
const PATIENCE: Duration = Duration::from_secs(600);

pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    /// Requests left unanswered on purpose: their callers wait for good.
    hung: Vec<SendResponse<Response<Body>>>,
    /// The server's clock against this process's, for its `Date` header;
    /// `None`: no `Date` header.
    pub clock: Option<SignedDuration>,
}

/// A request as the server received it.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// `""` without one.
    pub query: String,
    /// `Value::Null` without one.
    pub body: Value,
}

/// What the server answers.
pub enum Reply {
    /// This status and JSON body.
    Json(u16, Value),
    /// A Kubernetes `Status` failure as the API server sends it, with this
    /// code and message; the reason is the code's name (`Conflict`, `NotFound`).
    Failure(u16, &'static str),
    /// 200 with a body that is not JSON.
    Garbage(&'static str),
    /// Nothing, ever: the request hangs.
    Hang,
}

impl Reply {
    pub fn ok(object: &impl Serialize) -> Reply {
        Reply::Json(200, serde_json::to_value(object).expect("serializable"))
    }

    /// A list (`kind` e.g. `NodeList`) of `items`.
    pub fn list<T: Serialize>(api_version: &str, kind: &str, items: &[T]) -> Reply {
        Reply::Json(
            200,
            json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": { "resourceVersion": "1" },
                "items": items,
            }),
        )
    }
}

/// A client whose every request goes to the returned server.
pub fn pair() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = ApiServer {
        handle,
        hung: Vec::new(),
        clock: Some(SignedDuration::ZERO),
    };
    (Client::new(service, "default"), server)
}

impl ApiServer {
    /// Waits for the next request, checks that it is `method path`, answers
    /// it with `reply`, and returns it.
    pub async fn expect(&mut self, method: Method, path: &str, reply: Reply) -> Seen {
        self.expect_one_of(method, &[path], reply).await
    }

    /// As [`ApiServer::expect`], for a request to any of `paths` (where the
    /// order is the code's to choose, e.g. a cache's).
    pub async fn expect_one_of(&mut self, method: Method, paths: &[&str], reply: Reply) -> Seen {
        self.answer(|seen| {
            assert!(
                seen.method == method && paths.contains(&seen.path.as_str()),
                "expected {method} {paths:?}, got {seen:?}"
            );
            reply
        })
        .await
    }

    /// Waits for the next request, whatever it is, and answers it with what
    /// `reply` makes of it; returns it.
    pub async fn answer(&mut self, reply: impl FnOnce(&Seen) -> Reply) -> Seen {
        let next = tokio::time::timeout(PATIENCE, self.handle.next_request()).await;
        let Ok(Some((request, send))) = next else {
            panic!("expected a request, but none came");
        };
        let seen = Seen::read(request).await;
        let reply = reply(&seen);
        self.answer_with(send, reply);
        seen
    }

    /// Fails when the client makes any further request.
    pub async fn expect_no_more(&mut self) {
        let next = tokio::time::timeout(PATIENCE, self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request: {:?}", Seen::read(request).await);
        }
    }

    fn answer_with(&mut self, send: SendResponse<Response<Body>>, reply: Reply) {
        let (code, body) = match reply {
            Reply::Json(code, value) => (code, value.to_string()),
            Reply::Failure(code, message) => (
                code,
                json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": reason(code),
                    "code": code,
                })
                .to_string(),
            ),
            Reply::Garbage(text) => (200, text.to_string()),
            Reply::Hang => {
                self.hung.push(send);
                return;
            }
        };
        let mut response = Response::builder()
            .status(code)
            .header("content-type", "application/json");
        if let Some(skew) = self.clock {
            let date = jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&(Timestamp::now() + skew))
                .expect("a printable time");
            response = response.header(http::header::DATE, date);
        }
        let response = response
            .body(Body::from(body.into_bytes()))
            .expect("a valid response");
        send.send_response(response);
    }
}

/// `Too Many Requests` as Kubernetes spells reasons: `TooManyRequests`.
fn reason(code: u16) -> String {
    let name = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("Unknown");
    name.split_whitespace().collect()
}

impl Seen {
    async fn read(request: Request<Body>) -> Seen {
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        Seen {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON request body")
            },
        }
    }
}
