use http::Method;
use kube::Api;

use super::*;
use crate::carbon::SourceKind;
use crate::testing::api_server::{self, Reply};
use crate::testing::score;

const DE: &str = "/apis/carbon-kube.io/v1alpha1/carbonscores/de";
const MAX_AGE: Duration = Duration::from_secs(90 * 60);

fn zone() -> GridZone {
    GridZone::parse("DE").unwrap()
}

/// Asks the provider for DE while the server answers with `reply`.
async fn fetch(reply: Reply) -> Result<Reading, ProviderError> {
    let (client, mut server) = api_server::pair();
    let provider = SharedScores::new(Api::all(client), MAX_AGE);
    let de = zone();
    let (result, _) = tokio::join!(provider.fetch(&de), async {
        server.expect(Method::GET, DE, reply).await;
        server.expect_no_more().await;
    });
    result
}

/// DE's score observed `minutes_ago`, with a forecast point an hour ahead.
fn remote(kind: SourceKind, minutes_ago: i64) -> CarbonScore {
    let mut score = score("DE", 412.0, true, 3);
    let status = score.status.as_mut().unwrap();
    let observed = Timestamp::now() - jiff::SignedDuration::from_mins(minutes_ago);
    status.observed_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        observed,
    ));
    status.kind = kind;
    status.forecast = vec![crate::crd::ForecastEntry {
        at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            observed + jiff::SignedDuration::from_hours(1),
        ),
        grams_per_kwh: 250.0,
    }];
    score
}

#[tokio::test(start_paused = true)]
async fn a_fresh_remote_score_is_the_zones_reading_with_its_source_and_kind() {
    for kind in [SourceKind::Measured, SourceKind::Static] {
        let score = remote(kind, 10);
        let status = score.status.clone().unwrap();
        let reading = fetch(Reply::ok(&score)).await.expect("a fresh score");
        assert_eq!(reading.zone, zone());
        assert_eq!(reading.grams_per_kwh, 412.0);
        assert_eq!(reading.source, "electricity-maps");
        assert_eq!(reading.kind, kind, "a remote {kind:?} stays {kind:?}");
        // The wire keeps whole seconds.
        assert_eq!(
            reading.observed_at.as_second(),
            status.observed_at.unwrap().0.as_second()
        );
        assert_eq!(reading.forecast.len(), 1);
        assert_eq!(reading.forecast[0].grams_per_kwh, 250.0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_zone_the_source_lacks_is_not_covered() {
    let err = fetch(Reply::Failure(404, "carbonscores \"de\" not found"))
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::UnsupportedZone(zone()));
}

#[tokio::test(start_paused = true)]
async fn data_older_than_max_age_is_rejected_and_counted() {
    let err = fetch(Reply::ok(&remote(SourceKind::Measured, 91)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Invalid(m) if m.contains("older than max-age 5400s")),
        "{err}"
    );
    assert!(!err.is_skip(), "stale data is an error, not a skip");
}

#[tokio::test(start_paused = true)]
async fn a_score_without_data_or_with_implausible_values_is_rejected() {
    let mut empty = remote(SourceKind::Measured, 1);
    empty.status = None;
    let err = fetch(Reply::ok(&empty)).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Invalid(m) if m.contains("no data yet")),
        "{err}"
    );

    let mut negative = remote(SourceKind::Measured, 1);
    negative.status.as_mut().unwrap().intensity_grams_per_kwh = -5.0;
    let err = fetch(Reply::ok(&negative)).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Invalid(m) if m.contains("negative")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn garbled_answers_and_refusals_are_errors() {
    let err = fetch(Reply::Garbage("{not json")).await.unwrap_err();
    assert_eq!(err.outcome(), "malformed", "{err}");
    let err = fetch(Reply::Failure(403, "carbonscores is forbidden"))
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::Unauthorized(403));
    let err = fetch(Reply::Failure(500, "etcd timeout"))
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::Status(500));
}
