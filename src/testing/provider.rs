//! A carbon provider that answers from a script.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use jiff::Timestamp;

use crate::carbon::{GridZone, Reading, SourceKind};
use crate::providers::{Provider, ProviderError};

/// Answers from a script, then repeats its last answer; counts calls.
pub struct Scripted {
    name: &'static str,
    script: Mutex<VecDeque<Result<f64, ProviderError>>>,
    last: Mutex<Result<f64, ProviderError>>,
    calls: AtomicUsize,
}

impl Scripted {
    pub fn new(name: &'static str, answers: Vec<Result<f64, ProviderError>>) -> Arc<Self> {
        Arc::new(Self {
            name,
            script: Mutex::new(answers.into()),
            last: Mutex::new(Err(ProviderError::Status(500))),
            calls: AtomicUsize::new(0),
        })
    }

    pub fn always(name: &'static str, answer: Result<f64, ProviderError>) -> Arc<Self> {
        Self::new(name, vec![answer])
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Scripted {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = match self.script.lock().unwrap().pop_front() {
            Some(answer) => {
                *self.last.lock().unwrap() = answer.clone();
                answer
            }
            None => self.last.lock().unwrap().clone(),
        };
        answer.map(|grams_per_kwh| reading(zone, self.name, grams_per_kwh))
    }
}

/// A measured reading, observed at the epoch.
pub fn reading(zone: &GridZone, source: &str, grams_per_kwh: f64) -> Reading {
    Reading {
        zone: zone.clone(),
        grams_per_kwh,
        source: source.to_string(),
        observed_at: Timestamp::UNIX_EPOCH,
        kind: SourceKind::Measured,
        forecast: Vec::new(),
    }
}
