//! The stream relay: upstream SSE bytes in, client bytes out.
//!
//! Every frame is decoded once ([`SseDecoder`] then [`EventDecoder`]) and
//! shown to each [`StreamHook`] in order. A hook may forward the frame as it
//! is (its raw bytes, no re-encoding), drop it, replace it, hold output back
//! until it has seen enough (for example until a tool call's arguments are
//! complete), or deny, which ends the stream with an error event in the
//! client's own wire format. Held output is bounded; nothing held is ever
//! released after a deny.

use bytes::Bytes;

use crate::error::GatewayError;
use crate::events::{EventDecoder, EventInfo, Usage};
use crate::sse::{SseDecoder, SseFrame};
use crate::wire::Endpoint;

/// What a hook decides about one frame.
#[derive(Debug)]
pub enum Verdict {
    /// Pass the frame on (unless a later hook decides otherwise).
    Forward,
    /// Remove the frame from the stream.
    Drop,
    /// Send these bytes instead of the frame.
    Replace(Bytes),
    /// End the stream with this error.
    Deny(GatewayError),
}

/// Per-hook hold-back control. While any hook holds, output accumulates in
/// the relay's bounded hold-back buffer instead of reaching the client.
#[derive(Debug, Default)]
pub struct HoldControl {
    mask: u64,
    current: u32,
}

impl HoldControl {
    /// Hold output from this frame on (this frame included).
    pub fn hold(&mut self) {
        self.mask |= 1 << self.current;
    }
    /// Stop holding for this hook; held output is released after this frame
    /// unless another hook still holds.
    pub fn release(&mut self) {
        self.mask &= !(1 << self.current);
    }
    pub fn is_holding(&self) -> bool {
        self.mask != 0
    }
}

/// A per-call stream inspector.
pub trait StreamHook: Send {
    /// Name for logs and audit.
    fn name(&self) -> &'static str;
    /// Called once per frame, in order.
    fn on_event(&mut self, frame: &SseFrame, info: &EventInfo, hold: &mut HoldControl) -> Verdict;
    /// Called once when the upstream stream has ended normally. An error
    /// ends the client stream with that error instead of releasing held
    /// output.
    fn on_end(&mut self, _hold: &mut HoldControl) -> Result<(), GatewayError> {
        Ok(())
    }
}

/// Drops the usage-only chunk of an OpenAI chat stream when the gateway,
/// not the client, asked for it.
pub struct StripInjectedUsage;

impl StreamHook for StripInjectedUsage {
    fn name(&self) -> &'static str {
        "strip_injected_usage"
    }
    fn on_event(
        &mut self,
        _frame: &SseFrame,
        info: &EventInfo,
        _hold: &mut HoldControl,
    ) -> Verdict {
        if info.usage_only_chunk {
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    }
}

/// Result of feeding the relay: bytes to write to the client, in order, and
/// whether the stream must end now with an error (its event is already the
/// last element of `write`).
#[derive(Debug, Default)]
pub struct RelayOutput {
    pub write: Vec<Bytes>,
    pub ended_with: Option<GatewayError>,
}

/// Configuration of a relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Maximum bytes of held-back output before the stream is failed closed.
    pub max_hold_bytes: usize,
    /// Maximum size of one SSE frame.
    pub max_frame_bytes: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_hold_bytes: 1024 * 1024,
            max_frame_bytes: crate::sse::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Relays one SSE response stream through a list of hooks.
pub struct StreamRelay {
    endpoint: Endpoint,
    response_id: String,
    sse: SseDecoder,
    events: EventDecoder,
    hooks: Vec<Box<dyn StreamHook>>,
    hold: HoldControl,
    held: Vec<Bytes>,
    held_bytes: usize,
    limits: RelayLimits,
    saw_terminal: bool,
    done: bool,
    released_bytes: u64,
    frames: Vec<SseFrame>,
    captured: Option<String>,
}

impl StreamRelay {
    pub fn new(
        endpoint: Endpoint,
        response_id: String,
        hooks: Vec<Box<dyn StreamHook>>,
        limits: RelayLimits,
    ) -> Self {
        assert!(hooks.len() <= 64, "at most 64 stream hooks");
        StreamRelay {
            endpoint,
            response_id,
            sse: SseDecoder::new(limits.max_frame_bytes),
            events: EventDecoder::new(endpoint),
            hooks,
            hold: HoldControl::default(),
            held: Vec::new(),
            held_bytes: 0,
            limits,
            saw_terminal: false,
            done: false,
            released_bytes: 0,
            frames: Vec::new(),
            captured: None,
        }
    }

    /// Usage seen in the stream so far.
    pub fn usage(&self) -> Usage {
        self.events.usage()
    }

    /// Bytes released to the client so far.
    pub fn released_bytes(&self) -> u64 {
        self.released_bytes
    }

    /// Keep the text the stream carries (for deployments that store content).
    pub fn capture_text(&mut self) {
        self.captured.get_or_insert_with(String::new);
    }

    /// The text seen so far, when captured.
    pub fn captured_text(&self) -> Option<&str> {
        self.captured.as_deref()
    }

    /// End the stream with `err` even if it already ended normally: the
    /// returned error event replaces whatever was about to be written.
    pub fn abort_with(&mut self, err: GatewayError) -> Vec<Bytes> {
        vec![self.end_with(&err)]
    }

    /// Whether the stream has ended (normally or with an error).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed a chunk of upstream body.
    pub fn push(&mut self, chunk: &[u8]) -> RelayOutput {
        let mut out = RelayOutput::default();
        if self.done {
            return out;
        }
        let mut frames = std::mem::take(&mut self.frames);
        if let Err(e) = self.sse.feed(chunk, &mut frames) {
            frames.clear();
            self.frames = frames;
            return self.fail(GatewayError::BadUpstreamResponse(e.to_string()));
        }
        for frame in frames.drain(..) {
            if let Err(e) = self.process(frame, &mut out) {
                out.write.push(self.end_with(&e));
                out.ended_with = Some(e);
                break;
            }
        }
        self.frames = frames;
        out
    }

    /// The upstream body ended normally.
    pub fn finish(&mut self) -> RelayOutput {
        let mut out = RelayOutput::default();
        if self.done {
            return out;
        }
        let mut frames = std::mem::take(&mut self.frames);
        self.sse.finish(&mut frames);
        for frame in frames.drain(..) {
            if let Err(e) = self.process(frame, &mut out) {
                out.write.push(self.end_with(&e));
                out.ended_with = Some(e);
                return out;
            }
        }
        let mut end_result = Ok(());
        for (i, hook) in self.hooks.iter_mut().enumerate() {
            self.hold.current = i as u32;
            if let Err(e) = hook.on_end(&mut self.hold) {
                end_result = Err(e);
                break;
            }
        }
        if end_result.is_ok() && !self.saw_terminal {
            end_result = Err(GatewayError::UpstreamBroken(
                "the upstream stream ended before its final event".into(),
            ));
        }
        match end_result {
            Ok(()) => {
                self.flush_held(&mut out);
                self.done = true;
            }
            Err(e) => {
                out.write.push(self.end_with(&e));
                out.ended_with = Some(e);
            }
        }
        out
    }

    /// The upstream failed (reset, timeout …): end the client stream with an
    /// error event. Held output is discarded, never released.
    pub fn fail(&mut self, err: GatewayError) -> RelayOutput {
        if self.done {
            return RelayOutput::default();
        }
        let ev = self.end_with(&err);
        RelayOutput {
            write: vec![ev],
            ended_with: Some(err),
        }
    }

    fn end_with(&mut self, err: &GatewayError) -> Bytes {
        self.held.clear();
        self.held_bytes = 0;
        self.done = true;
        let ev = err.stream_event(self.endpoint, &self.response_id);
        self.released_bytes += ev.len() as u64;
        ev
    }

    fn process(&mut self, frame: SseFrame, out: &mut RelayOutput) -> Result<(), GatewayError> {
        let info = self.events.decode(&frame);
        if let (Some(buf), Some(t)) = (self.captured.as_mut(), info.text.as_deref()) {
            buf.push_str(t);
        }
        if info.terminal {
            self.saw_terminal = true;
        }
        let mut bytes = Some(frame.raw.clone());
        for (i, hook) in self.hooks.iter_mut().enumerate() {
            self.hold.current = i as u32;
            match hook.on_event(&frame, &info, &mut self.hold) {
                Verdict::Forward => {}
                Verdict::Drop => bytes = None,
                Verdict::Replace(b) => bytes = Some(b),
                Verdict::Deny(e) => return Err(e),
            }
        }
        if let Some(b) = bytes {
            if self.hold.is_holding() {
                self.held_bytes += b.len();
                self.held.push(b);
                if self.held_bytes > self.limits.max_hold_bytes {
                    return Err(GatewayError::StreamHoldExceeded {
                        limit: self.limits.max_hold_bytes,
                    });
                }
                return Ok(());
            }
            self.flush_held(out);
            self.released_bytes += b.len() as u64;
            out.write.push(b);
        } else if !self.hold.is_holding() {
            self.flush_held(out);
        }
        Ok(())
    }

    fn flush_held(&mut self, out: &mut RelayOutput) {
        for b in self.held.drain(..) {
            self.released_bytes += b.len() as u64;
            out.write.push(b);
        }
        self.held_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(
        hooks: Vec<Box<dyn StreamHook>>,
        input: &str,
        split: usize,
    ) -> (Vec<u8>, Option<GatewayError>) {
        let mut r = StreamRelay::new(
            Endpoint::ChatCompletions,
            "id".into(),
            hooks,
            RelayLimits::default(),
        );
        let mut written = Vec::new();
        let mut err = None;
        for part in [&input.as_bytes()[..split], &input.as_bytes()[split..]] {
            let o = r.push(part);
            written.extend(o.write.iter().flat_map(|b| b.to_vec()));
            err = err.or(o.ended_with);
        }
        let o = r.finish();
        written.extend(o.write.iter().flat_map(|b| b.to_vec()));
        (written, err.or(o.ended_with))
    }

    #[test]
    fn no_hooks_is_byte_identical() {
        for split in 0..CHAT.len() {
            let (out, err) = run(vec![], CHAT, split);
            assert_eq!(out, CHAT.as_bytes());
            assert!(err.is_none());
        }
    }

    #[test]
    fn injected_usage_chunk_is_stripped() {
        let (out, _) = run(vec![Box::new(StripInjectedUsage)], CHAT, 10);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("\"usage\""));
        assert!(s.ends_with("data: [DONE]\n\n"));
    }

    /// Holds tool-call fragments until the choice finishes, then releases.
    struct HoldToolCalls {
        deny: bool,
    }
    impl StreamHook for HoldToolCalls {
        fn name(&self) -> &'static str {
            "hold_tool_calls"
        }
        fn on_event(
            &mut self,
            frame: &SseFrame,
            info: &EventInfo,
            hold: &mut HoldControl,
        ) -> Verdict {
            if !info.tool_calls.is_empty() {
                hold.hold();
            }
            if frame
                .data_str()
                .is_some_and(|d| d.contains("finish_reason\":\"tool_calls"))
            {
                if self.deny {
                    return Verdict::Deny(GatewayError::InvalidRequest("tool denied".into()));
                }
                hold.release();
            }
            Verdict::Forward
        }
    }

    #[test]
    fn held_output_is_released_in_order() {
        for split in 0..CHAT.len() {
            let (out, err) = run(vec![Box::new(HoldToolCalls { deny: false })], CHAT, split);
            assert_eq!(out, CHAT.as_bytes(), "split {split}");
            assert!(err.is_none());
        }
    }

    #[test]
    fn deny_discards_held_output_and_ends_with_error_event() {
        for split in 0..CHAT.len() {
            let (out, err) = run(vec![Box::new(HoldToolCalls { deny: true })], CHAT, split);
            let s = String::from_utf8(out).unwrap();
            assert!(
                !s.contains("tool_calls"),
                "held fragments leaked at split {split}: {s}"
            );
            assert!(s.ends_with("\n\n") && s.contains("{\"error\":"));
            assert!(!s.contains("[DONE]"));
            assert!(err.is_some());
        }
    }

    #[test]
    fn hold_back_is_bounded() {
        struct HoldAll;
        impl StreamHook for HoldAll {
            fn name(&self) -> &'static str {
                "hold_all"
            }
            fn on_event(
                &mut self,
                _f: &SseFrame,
                _i: &EventInfo,
                hold: &mut HoldControl,
            ) -> Verdict {
                hold.hold();
                Verdict::Forward
            }
        }
        let mut r = StreamRelay::new(
            Endpoint::ChatCompletions,
            "id".into(),
            vec![Box::new(HoldAll)],
            RelayLimits {
                max_hold_bytes: 100,
                ..RelayLimits::default()
            },
        );
        let o = r.push(CHAT.as_bytes());
        assert!(matches!(
            o.ended_with,
            Some(GatewayError::StreamHoldExceeded { limit: 100 })
        ));
        assert_eq!(o.write.len(), 1, "only the error event is written");
        assert!(String::from_utf8_lossy(&o.write[0]).contains("response_too_large_to_inspect"));
    }

    #[test]
    fn missing_terminal_event_ends_with_error() {
        let (out, err) = run(vec![], "data: {\"choices\":[]}\n\n", 3);
        assert!(matches!(err, Some(GatewayError::UpstreamBroken(_))));
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("upstream_stream_broken"));
    }

    #[test]
    fn anthropic_error_event_format() {
        let mut r = StreamRelay::new(
            Endpoint::AnthropicMessages,
            "id".into(),
            vec![],
            RelayLimits::default(),
        );
        let o = r.fail(GatewayError::UpstreamBroken("reset".into()));
        assert!(o.write[0].starts_with(b"event: error\n"));
        assert!(r.is_done());
        assert!(r.push(b"data: x\n\n").write.is_empty());
    }
}
