//! Prometheus metrics of the gateway.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The gateway's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Calls by endpoint, model, provider and status.
    pub requests: IntCounterVec,
    /// Call latency in seconds by endpoint and provider.
    pub latency: HistogramVec,
    /// Time to first byte of the response body for streams.
    pub ttfb: HistogramVec,
    /// Upstream attempts by provider and outcome.
    pub upstream_attempts: IntCounterVec,
    /// Tokens by provider, model and direction (`input`, `output`).
    pub tokens: IntCounterVec,
    /// Circuit breaker state per provider (0 closed, 1 open, 2 half-open).
    pub breaker_state: IntGaugeVec,
    /// Streams currently open to clients.
    pub active_streams: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("tappass".into()), None).expect("a valid registry prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Calls handled, by endpoint, model, provider and status",
            ),
            &["endpoint", "model", "provider", "status"],
        )
        .expect("valid metric");
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0,
        ];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Call duration, request to last byte",
            )
            .buckets(buckets.clone()),
            &["endpoint", "provider"],
        )
        .expect("valid metric");
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "stream_first_byte_seconds",
                "Time from request to the first streamed byte sent to the client",
            )
            .buckets(buckets),
            &["endpoint", "provider"],
        )
        .expect("valid metric");
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "upstream_attempts_total",
                "Upstream attempts by provider and outcome",
            ),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new("tokens_total", "Tokens reported by providers"),
            &["provider", "model", "direction"],
        )
        .expect("valid metric");
        let breaker_state = IntGaugeVec::new(
            Opts::new("circuit_breaker_state", "0 closed, 1 open, 2 half-open"),
            &["provider"],
        )
        .expect("valid metric");
        let active_streams =
            IntGauge::new("active_streams", "Streams open to clients").expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(ttfb.clone()),
            Box::new(upstream_attempts.clone()),
            Box::new(tokens.clone()),
            Box::new(breaker_state.clone()),
            Box::new(active_streams.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            latency,
            ttfb,
            upstream_attempts,
            tokens,
            breaker_state,
            active_streams,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
