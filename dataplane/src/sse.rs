//! Incremental Server-Sent Events decoder.
//!
//! The decoder is fed arbitrary byte chunks (as they arrive from an upstream
//! socket) and yields complete [`SseFrame`]s. Each frame keeps its exact raw
//! bytes, so a frame that nothing rewrites is forwarded byte for byte, while
//! its fields (`event`, `data`, `id`, `retry`) are available for inspection
//! without copying in the common single-`data:`-line case.
//!
//! Framing follows the WHATWG EventSource rules: lines end in CRLF, LF or a
//! lone CR; a blank line ends a frame; lines starting with `:` are comments;
//! one leading space after the colon is dropped; several `data:` lines are
//! joined with `\n`. A lone CR at the very end of the buffered input is not
//! treated as a line end until the next byte shows whether an LF follows, so
//! a CRLF split across two chunks is never mistaken for two line ends.

use bytes::{Bytes, BytesMut};

/// One complete SSE frame: the raw bytes through the terminating blank line
/// and the parsed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The exact bytes of the frame as received, including its terminator.
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub event: Option<Bytes>,
    /// The joined `data:` lines, if any `data:` line was present.
    pub data: Option<Bytes>,
    /// The `id:` field, if any.
    pub id: Option<Bytes>,
    /// The `retry:` field when it is a valid integer.
    pub retry: Option<u64>,
}

impl SseFrame {
    /// The event type as text (`None` when absent or not UTF-8).
    pub fn event_str(&self) -> Option<&str> {
        self.event
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The data as text (`None` when absent or not UTF-8).
    pub fn data_str(&self) -> Option<&str> {
        self.data
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A frame with no `data:` line (comments, keep-alives, bare `event:`).
    pub fn has_data(&self) -> bool {
        self.data.is_some()
    }
}

/// Errors of the SSE decoder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A single frame grew past the configured maximum without ending.
    #[error("server-sent event larger than {limit} bytes")]
    FrameTooLarge { limit: usize },
}

/// Byte range of a field value inside the frame being assembled.
type Span = (usize, usize);

/// Incremental SSE decoder. Feed chunks with [`SseDecoder::feed`], then call
/// [`SseDecoder::finish`] at end of stream.
#[derive(Debug)]
pub struct SseDecoder {
    buf: BytesMut,
    /// Offset in `buf` where the next unparsed line starts.
    line_start: usize,
    event: Option<Span>,
    data: Vec<Span>,
    id: Option<Span>,
    retry: Option<u64>,
    max_frame: usize,
}

/// Default cap on one frame (8 MiB): far above any real LLM event.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl SseDecoder {
    /// A decoder that refuses frames larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        SseDecoder {
            buf: BytesMut::new(),
            line_start: 0,
            event: None,
            data: Vec::new(),
            id: None,
            retry: None,
            max_frame,
        }
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed one chunk; complete frames are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseFrame>) -> Result<(), SseError> {
        self.buf.extend_from_slice(chunk);
        self.parse(false, out);
        if self.buf.len() > self.max_frame {
            return Err(SseError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        Ok(())
    }

    /// End of stream: a trailing lone CR counts as a line end, and a last
    /// frame that lacks its blank line is still delivered if it carries data
    /// (servers often omit the final newline). Anything else left over is
    /// returned as a data-less frame so that no received byte is lost.
    pub fn finish(&mut self, out: &mut Vec<SseFrame>) {
        self.parse(true, out);
        if self.buf.is_empty() {
            return;
        }
        // An unterminated last line: process it as if a newline followed.
        let end = self.buf.len();
        if self.line_start < end {
            self.process_line(self.line_start, end);
            self.line_start = end;
        }
        let frame = self.take_frame(end);
        out.push(frame);
    }

    fn parse(&mut self, at_eof: bool, out: &mut Vec<SseFrame>) {
        loop {
            let rest = &self.buf[self.line_start..];
            let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) else {
                return;
            };
            let line_end = self.line_start + pos;
            let term_len = if self.buf[line_end] == b'\r' {
                match self.buf.get(line_end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A CR at the very end: wait for the next byte unless the stream is over.
                    None if at_eof => 1,
                    None => return,
                }
            } else {
                1
            };
            let next = line_end + term_len;
            if line_end == self.line_start {
                // Blank line: the frame is complete.
                let frame = self.take_frame(next);
                out.push(frame);
            } else {
                self.process_line(self.line_start, line_end);
                self.line_start = next;
            }
        }
    }

    fn process_line(&mut self, start: usize, end: usize) {
        let line = &self.buf[start..end];
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let mut v = start + colon + 1;
                if self.buf.get(v) == Some(&b' ') && v < end {
                    v += 1;
                }
                (&line[..colon], (v, end))
            }
            None => (line, (end, end)),
        };
        match name {
            b"event" => self.event = Some(value),
            b"data" => self.data.push(value),
            // Per spec, an id containing NUL is ignored.
            b"id" if !self.buf[value.0..value.1].contains(&0) => self.id = Some(value),
            b"retry" => {
                self.retry = std::str::from_utf8(&self.buf[value.0..value.1])
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    /// Split the first `end` bytes off as a frame and reset the field state.
    fn take_frame(&mut self, end: usize) -> SseFrame {
        let raw = self.buf.split_to(end).freeze();
        let slice = |s: Span| raw.slice(s.0..s.1);
        let data = match self.data.len() {
            0 => None,
            1 => Some(slice(self.data[0])),
            _ => {
                let mut joined = BytesMut::new();
                for (i, s) in self.data.iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(b"\n");
                    }
                    joined.extend_from_slice(&raw[s.0..s.1]);
                }
                Some(joined.freeze())
            }
        };
        let frame = SseFrame {
            event: self.event.map(slice),
            data,
            id: self.id.map(slice),
            retry: self.retry,
            raw,
        };
        self.line_start = 0;
        self.event = None;
        self.data.clear();
        self.id = None;
        self.retry = None;
        frame
    }
}

/// Encode one event in canonical form (`event:` line if given, one `data:`
/// line per line of `data`, LF line ends, blank line).
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(ev) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(ev.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out).unwrap();
        }
        d.finish(&mut out);
        out
    }

    fn summary(frames: &[SseFrame]) -> Vec<(Option<String>, Option<String>)> {
        frames
            .iter()
            .map(|f| {
                (
                    f.event_str().map(str::to_owned),
                    f.data_str().map(str::to_owned),
                )
            })
            .collect()
    }

    const STREAM: &[u8] = b"event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: line1\ndata: line2\n\nid: 7\nretry: 1500\ndata:nospace\n\ndata: [DONE]\n\n";

    fn expected() -> Vec<(Option<String>, Option<String>)> {
        vec![
            (Some("message_start".into()), Some("{\"a\":1}".into())),
            (None, None),
            (None, Some("line1\nline2".into())),
            (None, Some("nospace".into())),
            (None, Some("[DONE]".into())),
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let frames = decode_all(&[STREAM]);
        assert_eq!(summary(&frames), expected());
        assert_eq!(frames[3].id.as_deref(), Some(&b"7"[..]));
        assert_eq!(frames[3].retry, Some(1500));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
        assert_eq!(joined, STREAM);
    }

    #[test]
    fn split_at_every_byte_offset_into_two_and_three_chunks() {
        for i in 0..=STREAM.len() {
            let frames = decode_all(&[&STREAM[..i], &STREAM[i..]]);
            assert_eq!(summary(&frames), expected(), "split at {i}");
            let joined: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
            assert_eq!(joined, STREAM, "raw bytes preserved, split at {i}");
        }
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let frames = decode_all(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(summary(&frames), expected(), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(summary(&decode_all(&chunks)), expected());
    }

    #[test]
    fn crlf_and_lone_cr_line_ends_at_every_split() {
        let crlf = String::from_utf8(STREAM.to_vec())
            .unwrap()
            .replace('\n', "\r\n");
        let cr = String::from_utf8(STREAM.to_vec())
            .unwrap()
            .replace('\n', "\r");
        for s in [crlf.as_bytes(), cr.as_bytes()] {
            for i in 0..=s.len() {
                let frames = decode_all(&[&s[..i], &s[i..]]);
                assert_eq!(summary(&frames), expected(), "split at {i}");
                let joined: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
                assert_eq!(joined, s);
            }
        }
    }

    #[test]
    fn mixed_line_endings() {
        let s = b"data: a\r\ndata: b\rdata: c\n\r\nevent: x\rdata: y\r\r";
        let frames = decode_all(&[s]);
        assert_eq!(
            summary(&frames),
            vec![
                (None, Some("a\nb\nc".into())),
                (Some("x".into()), Some("y".into()))
            ]
        );
    }

    #[test]
    fn crlf_split_after_cr_is_one_line_end() {
        // "\r" then "\n" in the next chunk must not produce an empty line.
        let frames = decode_all(&[b"data: a\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(summary(&frames), vec![(None, Some("a\nb".into()))]);
    }

    #[test]
    fn missing_final_newline_still_delivers_last_event() {
        let frames = decode_all(&[b"data: one\n\ndata: two"]);
        assert_eq!(
            summary(&frames),
            vec![(None, Some("one".into())), (None, Some("two".into()))]
        );
        let frames = decode_all(&[b"data: one\n\ndata: two\n"]);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].raw.as_ref(), b"data: two\n");
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored_but_kept_raw() {
        let s = b": hello\nfoo: bar\nnocolon\ndata: x\n\n";
        let frames = decode_all(&[s]);
        assert_eq!(summary(&frames), vec![(None, Some("x".into()))]);
        assert_eq!(frames[0].raw.as_ref(), s);
    }

    #[test]
    fn field_without_colon_and_empty_data() {
        let frames = decode_all(&[b"data\n\ndata:\n\n"]);
        assert_eq!(
            summary(&frames),
            vec![(None, Some(String::new())), (None, Some(String::new()))]
        );
    }

    #[test]
    fn only_one_leading_space_is_stripped() {
        let frames = decode_all(&[b"data:  two spaces\n\n"]);
        assert_eq!(frames[0].data_str(), Some(" two spaces"));
    }

    #[test]
    fn invalid_retry_and_nul_id_are_ignored() {
        let frames = decode_all(&[b"retry: 12a\nid: a\0b\ndata: x\n\n"]);
        assert_eq!(frames[0].retry, None);
        assert_eq!(frames[0].id, None);
    }

    #[test]
    fn non_utf8_data_does_not_panic() {
        let frames = decode_all(&[b"data: \xff\xfe\n\n"]);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data_str(), None);
        assert_eq!(frames[0].data.as_deref(), Some(&b"\xff\xfe"[..]));
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(b"data: 0123456789abcdefghij", &mut out),
            Err(SseError::FrameTooLarge { limit: 16 })
        );
    }

    #[test]
    fn encode_round_trips() {
        let b = encode_event(Some("error"), "{\"a\":\n1}");
        assert_eq!(b.as_ref(), b"event: error\ndata: {\"a\":\ndata: 1}\n\n");
        let frames = decode_all(&[&b]);
        assert_eq!(frames[0].data_str(), Some("{\"a\":\n1}"));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_lose_nothing() {
        // A deterministic pseudo-random sweep over a small alphabet of the
        // bytes that matter to framing.
        let alphabet = b"\r\n:d ata\xffe";
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let mut input = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let split = if input.is_empty() {
                0
            } else {
                (seed as usize) % input.len()
            };
            let frames = decode_all(&[&input[..split], &input[split..]]);
            let joined: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
            assert_eq!(joined, input);
        }
    }
}
