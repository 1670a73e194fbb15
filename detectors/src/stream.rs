//! Streaming scanner: fed chunk by chunk, finds matches that span chunk
//! boundaries, and reports how many bytes are safe to release.

use crate::engine::{floor_char, merge, Confirm, Finding, Raw, RuleSet};
use crate::hs::{Scratch, Stream};
use crate::normalize::{self, OffsetMap};
use crate::ScanError;

/// Clusters whose confirmation window extends at most this far past the
/// prefilter end wait for the complete window before confirming.
const WAIT_FOR_WINDOW: usize = 512;

/// Result of feeding one chunk.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Feed {
    /// Findings confirmed by this chunk (spans are absolute offsets in the
    /// original stream).
    pub findings: Vec<Finding>,
    /// Number of bytes from the start of the stream that can be released:
    /// no finding can still start before this offset. Monotonic; always on a
    /// character boundary of the original stream.
    pub safe_to_release: usize,
}

#[derive(Debug, Clone, Copy)]
struct Cluster {
    rule: u32,
    first: usize,
    last: usize,
    /// Confirmation cannot succeed before this much normalized data is
    /// available (absolute offset); 0 when unknown.
    retry_at: usize,
    /// Matches before this offset were already confirmed (absolute; 0 when
    /// none): the search continues here.
    resume: usize,
}

impl Cluster {
    /// Where a match of this cluster can still start.
    fn lo(&self, rs: &RuleSet) -> usize {
        self.first
            .saturating_sub(rs.rule(self.rule).hs_max_len)
            .max(self.resume)
    }
}

/// A streaming scanner for one text stream (one response, one message).
///
/// Holds a Hyperscan stream, its own scratch, and a bounded window of
/// normalized text (at most [`RuleSet::hold_back`] bytes plus any match that
/// is still open). Per-chunk work allocates nothing proportional to the
/// stream.
pub struct StreamScanner {
    rs: RuleSet,
    hs: Option<Stream>,
    scratch: Scratch,
    /// Normalized bytes starting at absolute normalized offset `base`.
    buf: Vec<u8>,
    base: usize,
    map: OffsetMap,
    orig_total: usize,
    clusters: Vec<Cluster>,
    hits: Vec<(u32, usize)>,
    /// Per rule: end of the last emitted finding (absolute normalized).
    emitted_until: Vec<usize>,
    /// Confirmed findings not yet emitted: an open cluster may still yield
    /// a finding that contains and outranks them (block-mode merge rules).
    held: Vec<Raw>,
    released: usize,
    finished: bool,
}

impl RuleSet {
    /// Start a streaming scan.
    pub fn stream_scanner(&self) -> Result<StreamScanner, ScanError> {
        let scratch = self.take_scratch()?;
        let hs = self
            .inner
            .stream_db
            .open_stream()
            .map_err(|e| ScanError(e.message))?;
        Ok(StreamScanner {
            rs: self.clone(),
            hs: Some(hs),
            scratch,
            buf: Vec::with_capacity(4096),
            base: 0,
            map: OffsetMap::new(),
            orig_total: 0,
            clusters: Vec::new(),
            hits: Vec::new(),
            emitted_until: vec![0; self.len()],
            held: Vec::new(),
            released: 0,
            finished: false,
        })
    }
}

impl StreamScanner {
    /// Bytes of the original stream fed so far.
    pub fn total(&self) -> usize {
        self.orig_total
    }

    /// Feed the next chunk.
    pub fn feed(&mut self, chunk: &str) -> Result<Feed, ScanError> {
        if self.finished {
            return Err(ScanError("feed after finish".into()));
        }
        let norm_start = self.base + self.buf.len();
        let buf_start = self.buf.len();
        normalize::normalize_append(
            chunk,
            self.orig_total,
            norm_start,
            &mut self.buf,
            &mut self.map,
        );
        self.orig_total += chunk.len();
        let hits = &mut self.hits;
        hits.clear();
        let groups = &self.rs.inner.group_rules;
        if let Some(hs) = self.hs.as_mut() {
            hs.scan(&self.buf[buf_start..], &mut self.scratch, &mut |id, to| {
                for &r in &groups[id as usize] {
                    hits.push((r, to as usize));
                }
            })
            .map_err(|e| ScanError(e.message))?;
        }
        crate::trigger::scan(
            &self.rs.inner.triggers,
            &self.buf,
            buf_start,
            false,
            &mut |g, e| {
                for &r in &groups[g as usize] {
                    hits.push((r, self.base + e));
                }
            },
        );
        self.absorb_hits();
        self.step(false)
    }

    /// End of stream: report matches that needed end-of-data and everything
    /// still pending. All bytes are then safe to release.
    pub fn finish(&mut self) -> Result<Feed, ScanError> {
        if self.finished {
            return Ok(Feed {
                findings: Vec::new(),
                safe_to_release: self.orig_total,
            });
        }
        let hits = &mut self.hits;
        hits.clear();
        let groups = &self.rs.inner.group_rules;
        if let Some(hs) = self.hs.take() {
            hs.close(&mut self.scratch, &mut |id, to| {
                for &r in &groups[id as usize] {
                    hits.push((r, to as usize));
                }
            })
            .map_err(|e| ScanError(e.message))?;
        }
        let base = self.base;
        crate::trigger::scan(
            &self.rs.inner.triggers,
            &self.buf,
            self.buf.len(),
            true,
            &mut |g, e| {
                for &r in &groups[g as usize] {
                    hits.push((r, base + e));
                }
            },
        );
        self.absorb_hits();
        self.finished = true;
        self.step(true)
    }

    fn absorb_hits(&mut self) {
        for &(rule, end) in &self.hits {
            let r = self.rs.rule(rule);
            let gap = r.hs_max_len;
            if r.base64_run
                && !crate::engine::base64_run_may_be_text(
                    &self.buf,
                    end - self.base,
                    gap,
                    self.base == 0,
                )
            {
                continue;
            }
            match self
                .clusters
                .iter_mut()
                .rev()
                .find(|c| c.rule == rule && end <= c.last + gap)
            {
                Some(c) => {
                    if end > c.last {
                        c.last = end;
                        c.retry_at = 0;
                    }
                }
                None => self.clusters.push(Cluster {
                    rule,
                    first: end,
                    last: end,
                    retry_at: 0,
                    resume: 0,
                }),
            }
        }
    }

    fn step(&mut self, finished: bool) -> Result<Feed, ScanError> {
        let mut raws: Vec<Raw> = Vec::new();
        let avail = self.base + self.buf.len();
        let mut i = 0;
        while i < self.clusters.len() {
            let c = self.clusters[i];
            if !finished && c.retry_at > avail {
                i += 1;
                continue;
            }
            // Confirm once the whole window (and the byte after it) has
            // arrived, as block mode sees it, unless the window reaches far
            // ahead (PEM blocks, JWTs): those are confirmed as data arrives
            // so a completed match is released early.
            let ahead = self.rs.rule(c.rule).ahead;
            if !finished && ahead <= WAIT_FOR_WINDOW && c.last + ahead >= avail {
                i += 1;
                continue;
            }
            let before = raws.len();
            match self.rs.confirm(
                c.rule, c.first, c.last, c.resume, &self.buf, self.base, finished, 0, &mut raws,
            ) {
                Confirm::Partial { resume } => {
                    self.clusters[i].resume = resume;
                    self.clusters[i].retry_at = 0;
                    i += 1;
                }
                Confirm::Pending { retry_at } => {
                    raws.truncate(before);
                    self.clusters[i].retry_at = retry_at.unwrap_or(0);
                    i += 1;
                }
                Confirm::Done => {
                    self.clusters.swap_remove(i);
                }
            }
        }
        // repeated matches of a rule across clusters
        raws.retain(|r| {
            r.span.start >= self.emitted_until[r.rule as usize] || r.encoding.is_some()
        });
        raws.append(&mut self.held);
        let mut raws = merge(self.rs.rules_slice(), raws);
        // Hold back what an open cluster's future match could still contain.
        if !finished {
            let open_lo = self.clusters.iter().map(|c| c.lo(&self.rs)).min();
            if let Some(lo) = open_lo {
                let (keep, emit): (Vec<Raw>, Vec<Raw>) =
                    raws.into_iter().partition(|r| r.span.end > lo);
                self.held = keep;
                raws = emit;
            }
        }
        for r in &raws {
            let e = &mut self.emitted_until[r.rule as usize];
            *e = (*e).max(r.span.end);
        }
        let findings = raws
            .into_iter()
            .map(|r| {
                let span = self.map.to_orig(r.span.start)..self.map.to_orig(r.span.end);
                self.rs.finding(r, span)
            })
            .collect();

        // Safe to release: nothing can start before the hold-back window or
        // before an open cluster's window.
        let end = self.base + self.buf.len();
        let safe_norm = if finished {
            end
        } else {
            let mut s = end.saturating_sub(self.rs.hold_back());
            for c in &self.clusters {
                let lo = c.lo(&self.rs);
                s = s.min(lo);
            }
            for r in &self.held {
                s = s.min(r.span.start);
            }
            s.max(self.base)
        };
        let safe_norm = self.base + floor_char(&self.buf, safe_norm - self.base);
        let safe_orig = if finished {
            self.orig_total
        } else {
            self.map.to_orig(safe_norm).min(self.orig_total)
        };
        self.released = self.released.max(safe_orig);

        // Trim the window: keep a little context before anything that can
        // still be examined (for \b and other look-behind assertions).
        let keep_from = safe_norm.saturating_sub(16).max(self.base);
        let drop = keep_from - self.base;
        if drop >= 4096 || (drop > 0 && drop * 2 >= self.buf.len()) {
            self.buf.drain(..drop);
            self.base = keep_from;
            self.map.forget_before(keep_from);
        }
        Ok(Feed {
            findings,
            safe_to_release: self.released,
        })
    }
}

impl RuleSet {
    pub(crate) fn rules_slice(&self) -> &[crate::engine::CompiledRule] {
        &self.inner.rules
    }
}
