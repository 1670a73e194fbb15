//! Helpers shared by the detector test files.

use tappass_detectors::{Finding, RuleSet};

/// Every finding of `rs`'s streaming scanner fed `text` in chunks of at
/// most `size` bytes (cut at character boundaries), then finished.
pub fn stream_in_chunks(rs: &RuleSet, text: &str, size: usize) -> Vec<Finding> {
    let mut s = rs.stream_scanner().unwrap();
    let mut found = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if end == start {
            // a character longer than `size`: take it whole
            end = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
        found.extend(s.feed(&text[start..end]).unwrap().findings);
        start = end;
    }
    found.extend(s.finish().unwrap().findings);
    found
}
