//! Validators: checksums and structural checks applied to a candidate value
//! after the pattern matched. Each takes the matched value and returns the
//! accepted byte range inside it (usually the whole value; IBAN may trim
//! trailing characters beyond its country length), or `None` to reject.

use std::ops::Range;
use std::sync::LazyLock;

use base64::Engine as _;

/// Names accepted in rule files (`validators: [...]`).
pub const VALIDATORS: &[&str] = &[
    "luhn",
    "card",
    "iban",
    "us_ssn",
    "de_tax_id",
    "fr_nir",
    "es_dni",
    "it_codice_fiscale",
    "nl_bsn",
    "be_national_number",
    "uk_nino",
    "ipv4",
    "ipv6",
    "email",
    "phone",
    "date",
    "jwt",
    "not_placeholder",
    "url_carries_data",
    "has_digit",
    "mixed_alnum",
    "not_vendor_token",
    "phone_national",
];

/// Run validator `name` on `value`.
pub fn run(name: &str, value: &str) -> Option<Range<usize>> {
    let whole = 0..value.len();
    let ok = |b: bool| if b { Some(whole.clone()) } else { None };
    match name {
        "luhn" => ok(luhn_str(value)),
        "card" => ok(card(value)),
        "iban" => iban(value),
        "us_ssn" => ok(us_ssn(value)),
        "de_tax_id" => ok(de_tax_id(value)),
        "fr_nir" => ok(fr_nir(value)),
        "es_dni" => ok(es_dni(value)),
        "it_codice_fiscale" => ok(it_codice_fiscale(value)),
        "nl_bsn" => ok(nl_bsn(value)),
        "be_national_number" => ok(be_national_number(value)),
        "uk_nino" => ok(uk_nino(value)),
        "ipv4" => ok(ipv4(value)),
        "ipv6" => ok(ipv6(value)),
        "email" => ok(email(value)),
        "phone" => ok(phone(value)),
        "date" => ok(date(value)),
        "jwt" => ok(jwt(value)),
        "not_placeholder" => ok(not_placeholder(value)),
        "url_carries_data" => ok(url_carries_data(value)),
        "has_digit" => ok(value.bytes().any(|b| b.is_ascii_digit())),
        "mixed_alnum" => ok(mixed_alnum(value)),
        "not_vendor_token" => ok(!vendor_token(value)),
        "phone_national" => ok(phone(value) && digits(value).len() >= 9),
        _ => None,
    }
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect()
}

/// Luhn (mod 10) over a digit sequence.
pub fn luhn(d: &[u8]) -> bool {
    if d.len() < 2 {
        return false;
    }
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = x as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.rem_euclid(10) == 0
}

fn luhn_str(s: &str) -> bool {
    luhn(&digits(s))
}

/// Payment card: known IIN range and length, then Luhn. Separators must be
/// uniform (all spaces, all dashes or none).
pub fn card(s: &str) -> bool {
    let has_space = s.contains(' ');
    let has_dash = s.contains('-');
    if has_space && has_dash {
        return false;
    }
    let d = digits(s);
    let n = d.len();
    if !(12..=19).contains(&n) || !luhn(&d) {
        return false;
    }
    if d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let p = |k: usize| d[..k].iter().fold(0u32, |a, &x| a * 10 + x as u32);
    let (p1, p2, p3, p4, p6) = (p(1), p(2), p(3), p(4), p(6));
    let brand_ok = match p1 {
        4 => matches!(n, 13 | 16 | 19), // Visa
        5 => (51..=55).contains(&p2) && n == 16 || p2 == 50 || (56..=59).contains(&p2), // MC, Maestro
        2 => (2221..=2720).contains(&p4) && n == 16 || p4 == 2131 && n == 15, // MC 2-series, JCB (legacy 15-digit)
        1 => p4 == 1800 && n == 15, // JCB (legacy 15-digit)
        3 => {
            (p2 == 34 || p2 == 37) && n == 15                           // Amex
                || (3528..=3589).contains(&p4) && (16..=19).contains(&n) // JCB
                || ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39)
                    && (14..=19).contains(&n) // Diners
        }
        6 => {
            p4 == 6011
                || p2 == 65
                || (644..=649).contains(&p3)
                || (622126..=622925).contains(&p6)
                || p2 == 62
                || p2 == 60
                || p2 == 63
                || p2 == 67
                || p2 == 64
        }
        _ => false,
    };
    brand_ok && (n >= 13 || p2 == 50 || (56..=69).contains(&p2))
}

/// IBAN lengths per ISO 13616 registry country code.
fn iban_len(cc: &str) -> Option<usize> {
    Some(match cc {
        "AD" => 24,
        "AE" => 23,
        "AL" => 28,
        "AT" => 20,
        "AZ" => 28,
        "BA" => 20,
        "BE" => 16,
        "BG" => 22,
        "BH" => 22,
        "BI" => 27,
        "BR" => 29,
        "BY" => 28,
        "CH" => 21,
        "CR" => 22,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DJ" => 27,
        "DK" => 18,
        "DO" => 28,
        "EE" => 20,
        "EG" => 29,
        "ES" => 24,
        "FI" => 18,
        "FK" => 18,
        "FO" => 18,
        "FR" => 27,
        "GB" => 22,
        "GE" => 22,
        "GI" => 23,
        "GL" => 18,
        "GR" => 27,
        "GT" => 28,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IL" => 23,
        "IQ" => 23,
        "IS" => 26,
        "IT" => 27,
        "JO" => 30,
        "KW" => 30,
        "KZ" => 20,
        "LB" => 28,
        "LC" => 32,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "LY" => 25,
        "MC" => 27,
        "MD" => 24,
        "ME" => 22,
        "MK" => 19,
        "MN" => 20,
        "MR" => 27,
        "MT" => 31,
        "MU" => 30,
        "NI" => 28,
        "NL" => 18,
        "NO" => 15,
        "OM" => 23,
        "PK" => 24,
        "PL" => 28,
        "PS" => 29,
        "PT" => 25,
        "QA" => 29,
        "RO" => 24,
        "RS" => 22,
        "RU" => 33,
        "SA" => 24,
        "SC" => 31,
        "SD" => 18,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        "SO" => 23,
        "ST" => 25,
        "SV" => 28,
        "TL" => 23,
        "TN" => 24,
        "TR" => 26,
        "UA" => 29,
        "VA" => 22,
        "VG" => 24,
        "XK" => 20,
        "YE" => 30,
        _ => return None,
    })
}

/// Mod-97 check (ISO 7064) over an IBAN without separators.
pub fn iban_mod97(compact: &str) -> bool {
    let b = compact.as_bytes();
    if b.len() < 5 || !b.iter().all(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(b[..4].iter()) {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_digit() {
            rem = (rem * 10 + (c - b'0') as u32) % 97;
        } else {
            let v = (c - b'A') as u32 + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem == 1
}

/// IBAN: country length then mod-97. Trims characters beyond the country's
/// length (the pattern may run into a following word).
pub fn iban(s: &str) -> Option<Range<usize>> {
    let cc = s.get(..2)?;
    let want = iban_len(cc)?;
    let mut compact = String::with_capacity(want);
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if c == ' ' {
            continue;
        }
        if compact.len() == want {
            break;
        }
        compact.push(c);
        end = i + c.len_utf8();
    }
    if compact.len() != want || !iban_mod97(&compact) {
        return None;
    }
    // A trimmed IBAN must not be followed directly by more alphanumerics.
    let rest = &s[end..];
    if rest.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(0..end)
}

/// US SSN: area not 000, 666 or 900–999; group not 00; serial not 0000;
/// separators uniform.
pub fn us_ssn(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let seps: Vec<char> = s.chars().filter(|c| !c.is_ascii_digit()).collect();
    if !(seps.is_empty() || seps.len() == 2 && seps[0] == seps[1]) {
        return false;
    }
    let area = d[0] as u32 * 100 + d[1] as u32 * 10 + d[2] as u32;
    let group = d[3] as u32 * 10 + d[4] as u32;
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + x as u32);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        // well-known advertising/placeholder numbers
        && !(area == 123 && group == 45 && serial == 6789)
        && !(area == 78 && group == 5 && serial == 1120)
}

/// German Steuer-IdNr: 11 digits, first not 0, ISO 7064 MOD 11,10 check digit,
/// and in the first 10 digits exactly one digit repeats (2 or 3 times).
pub fn de_tax_id(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 11 || d[0] == 0 {
        return false;
    }
    let mut counts = [0u8; 10];
    for &x in &d[..10] {
        counts[x as usize] += 1;
    }
    let repeated = counts.iter().filter(|&&c| c >= 2).count();
    let max = *counts.iter().max().unwrap_or(&0);
    if repeated != 1 || max > 3 {
        return false;
    }
    let mut product = 10u32;
    for &x in &d[..10] {
        let mut sum = (x as u32 + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = (sum * 2) % 11;
    }
    let check = (11 - product) % 10;
    check == d[10] as u32
}

/// French NIR (numéro de sécurité sociale): 13 characters + 2-digit key,
/// key = 97 − (number mod 97); Corsica 2A/2B substituted per INSEE.
pub fn fr_nir(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.len() != 15 {
        return false;
    }
    let body = &compact[..13];
    let key: u64 = match compact[13..].parse() {
        Ok(k) => k,
        Err(_) => return false,
    };
    let sex = body.as_bytes()[0];
    if sex != b'1' && sex != b'2' {
        return false;
    }
    let numeric = if body[5..7].eq_ignore_ascii_case("2A") {
        let n: u64 = match format!("{}19{}", &body[..5], &body[7..]).parse() {
            Ok(n) => n,
            Err(_) => return false,
        };
        n.checked_sub(1_000_000)
    } else if body[5..7].eq_ignore_ascii_case("2B") {
        let n: u64 = match format!("{}18{}", &body[..5], &body[7..]).parse() {
            Ok(n) => n,
            Err(_) => return false,
        };
        n.checked_sub(2_000_000)
    } else {
        body.parse().ok()
    };
    match numeric {
        Some(n) => key == 97 - (n % 97) && (1..=97).contains(&key),
        None => false,
    }
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// Spanish DNI (8 digits + letter) and NIE (X/Y/Z + 7 digits + letter),
/// letter = table[number mod 23].
pub fn es_dni(s: &str) -> bool {
    let compact: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if compact.len() != 9 {
        return false;
    }
    let mut num = String::with_capacity(8);
    match compact[0] {
        b'X' => num.push('0'),
        b'Y' => num.push('1'),
        b'Z' => num.push('2'),
        c if c.is_ascii_digit() => num.push(c as char),
        _ => return false,
    }
    for &c in &compact[1..8] {
        if !c.is_ascii_digit() {
            return false;
        }
        num.push(c as char);
    }
    let n: u32 = match num.parse() {
        Ok(n) => n,
        Err(_) => return false,
    };
    DNI_LETTERS[(n % 23) as usize] == compact[8]
}

/// Italian codice fiscale: 16 characters, check character from the odd/even
/// position tables (omocodia letters accepted in digit positions).
pub fn it_codice_fiscale(s: &str) -> bool {
    const ODD: [u32; 36] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, // 0-9
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23, // A-Z
    ];
    let b: Vec<u8> = s.bytes().map(|c| c.to_ascii_uppercase()).collect();
    if b.len() != 16 || !b.iter().all(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    let idx = |c: u8| -> usize {
        if c.is_ascii_digit() {
            (c - b'0') as usize
        } else {
            (c - b'A') as usize + 10
        }
    };
    let mut sum = 0u32;
    for (i, &c) in b[..15].iter().enumerate() {
        if i % 2 == 0 {
            sum += ODD[idx(c)];
        } else {
            sum += if c.is_ascii_digit() {
                (c - b'0') as u32
            } else {
                (c - b'A') as u32
            };
        }
    }
    b[15] == b'A' + (sum % 26) as u8
}

/// Dutch BSN: 9 digits, "elfproef" with weights 9..2 and −1.
pub fn nl_bsn(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 9 || d.iter().all(|&x| x == 0) {
        return false;
    }
    let mut sum: i32 = 0;
    for (i, &x) in d[..8].iter().enumerate() {
        sum += (9 - i as i32) * x as i32;
    }
    sum -= d[8] as i32;
    sum % 11 == 0
}

/// Belgian national number (rijksregisternummer): YYMMDD-SSS-CC,
/// CC = 97 − (first 9 digits mod 97), with a leading 2 for births ≥ 2000.
pub fn be_national_number(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 11 {
        return false;
    }
    let first9 = d[..9].iter().fold(0u64, |a, &x| a * 10 + x as u64);
    let cc = d[9] as u64 * 10 + d[10] as u64;
    let month = d[2] as u32 * 10 + d[3] as u32;
    if month > 12 && !(20..=32).contains(&month) && !(40..=52).contains(&month) {
        return false;
    }
    cc == 97 - first9 % 97 || cc == 97 - (2_000_000_000 + first9) % 97
}

/// UK National Insurance number: two prefix letters (not D, F, I, Q, U, V; second
/// not O; not BG, GB, KN, NK, NT, TN, ZZ), six digits, suffix A–D.
pub fn uk_nino(s: &str) -> bool {
    let b: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if b.len() != 9 {
        return false;
    }
    let (a, c) = (b[0], b[1]);
    let bad1 = b"DFIQUV";
    let bad2 = b"DFIQUVO";
    if !a.is_ascii_uppercase() || !c.is_ascii_uppercase() || bad1.contains(&a) || bad2.contains(&c)
    {
        return false;
    }
    let pre = [a, c];
    if [b"BG", b"GB", b"KN", b"NK", b"NT", b"TN", b"ZZ"]
        .iter()
        .any(|p| **p == pre)
    {
        return false;
    }
    b[2..8].iter().all(|x| x.is_ascii_digit()) && (b'A'..=b'D').contains(&b[8])
}

/// Dotted-quad IPv4 without leading zeros; excludes 0.0.0.0 and version-like
/// strings that start with 0.
pub fn ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return false;
    }
    for p in &parts {
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
            return false;
        }
        match p.parse::<u16>() {
            Ok(v) if v <= 255 => {}
            _ => return false,
        }
    }
    parts[0] != "0"
}

/// IPv6 literal that parses and has at least three non-empty groups (so that
/// `std::io` or `a::b` in code are not reported).
pub fn ipv6(s: &str) -> bool {
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    groups >= 3 && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// E-mail: local part and domain labels well formed.
pub fn email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty()
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || domain.contains("..")
    {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
        && labels
            .last()
            .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// Phone: 7–15 digits (E.164 maximum is 15), not all one digit, and not a
/// plain ISO date or version.
pub fn phone(s: &str) -> bool {
    let main = match s.find(['x', 'X']) {
        Some(i) => &s[..i],
        None => s,
    };
    let d = digits(main);
    let n = d.len();
    if !(7..=15).contains(&n) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    // Reject things that look like dates (2024-01-15) or dotted versions.
    let groups: Vec<&str> = main
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() == 3 && groups[0].len() == 4 && groups[1].len() == 2 && groups[2].len() == 2 {
        return false;
    }
    // ... dates written day/month/year (03/06/1983, 12.03.1980) and the
    // US SSN layout 123-45-6789.
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens.len() == 3 && lens[0] <= 2 && lens[1] <= 2 && lens[2] == 4 && date(main) {
        return false;
    }
    if lens == [3, 2, 4] && main.trim().matches('-').count() == 2 && !main.contains(' ') {
        return false;
    }
    true
}

/// Calendar date in d/m/y, m/d/y, y-m-d or "12 March 1980" forms with a
/// plausible year (1900–2099) and day/month.
pub fn date(s: &str) -> bool {
    let nums: Vec<u32> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .filter_map(|g| g.parse().ok())
        .collect();
    let lower = s.to_ascii_lowercase();
    let has_month_name = MONTHS.iter().any(|m| lower.contains(m));
    let year_ok = |y: u32| (1900..=2099).contains(&y) || y < 100;
    match nums.as_slice() {
        [a, b, c] if *a > 31 => year_ok(*a) && (1..=12).contains(b) && (1..=31).contains(c),
        [a, b, c] => {
            year_ok(*c)
                && ((1..=31).contains(a) && (1..=12).contains(b)
                    || (1..=12).contains(a) && (1..=31).contains(b))
        }
        [d, y] if has_month_name => (1..=31).contains(d) && year_ok(*y),
        _ => false,
    }
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "janv",
    "fév", "mär", "mai", "juin", "juil", "août", "okt", "dez", "ene", "abr", "ago", "dic", "gen",
    "mag", "giu", "lug", "set", "ott",
];

/// JWT: the header decodes (base64url) to a JSON object naming `alg`.
pub fn jwt(s: &str) -> bool {
    let Some(header) = s.split('.').next() else {
        return false;
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let trimmed = header.trim_end_matches('=');
    match engine.decode(trimmed) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            text.trim_start().starts_with('{') && text.contains("\"alg\"")
        }
        Err(_) => false,
    }
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(s: &str) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Words and marks of a placeholder value ([`not_placeholder`]), matched
/// ignoring ASCII case.
const PLACEHOLDER_WORD_LIST: &[&str] = &[
    "xxxx",
    "****",
    "....",
    "<",
    ">",
    "${",
    "{{",
    "your",
    "example",
    "placeholder",
    "redacted",
    "changeme",
    "dummy",
    "sample",
    "abcdefgh",
    "12345678",
    "00000000",
    "insert",
    "replace",
    "here",
    "fake",
    "test1234",
    "secret_key_here",
    "token_here",
];

/// Words of a documentation or template value ([`has_placeholder_word`]),
/// matched ignoring ASCII case.
const TEMPLATE_WORD_LIST: &[&str] = &[
    "xxxx",
    "****",
    "example",
    "your_",
    "your-",
    "placeholder",
    "redacted",
    "changeme",
    "put_",
];

/// One pass over a value for any of `words`, ignoring ASCII case.
fn any_word(words: &[&str]) -> aho_corasick::AhoCorasick {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(words)
        .expect("a short list of literal words always builds")
}

static PLACEHOLDER_WORDS: LazyLock<aho_corasick::AhoCorasick> =
    LazyLock::new(|| any_word(PLACEHOLDER_WORD_LIST));
static TEMPLATE_WORDS: LazyLock<aho_corasick::AhoCorasick> =
    LazyLock::new(|| any_word(TEMPLATE_WORD_LIST));

/// Rejects obvious placeholders: repeated characters, `xxxx`, `<...>`,
/// `${VAR}`, `your_api_key`, `example`, masked `****`, ascending runs.
pub fn not_placeholder(s: &str) -> bool {
    if PLACEHOLDER_WORDS.is_match(s) {
        return false;
    }
    if looks_placeholder(s) {
        return false;
    }
    let b = s.as_bytes();
    if b.len() >= 4 {
        // the longest run of one character may not exceed a third of the value
        let mut run = 1;
        let mut best = 1;
        for w in b.windows(2) {
            if w[0] == w[1] {
                run += 1;
                best = best.max(run);
            } else {
                run = 1;
            }
        }
        if best * 3 > b.len() {
            return false;
        }
    }
    true
}

/// Words that mark a documentation or template value rather than a live
/// credential (checked case-insensitively on every secret value).
pub fn has_placeholder_word(s: &str) -> bool {
    TEMPLATE_WORDS.is_match(s)
}

/// Structural placeholder test applied to the value of every secret rule
/// (after the rule's literal prefix): references to variables or templates
/// (`$VAR`, `$(cmd)`, `[PASSWORD]`, `%VAR%`, `{name}`), elided values
/// (`..`), and patterns a random token practically never contains: a run of
/// six identical characters, a twelve-character stretch repeating with a
/// period of at most seven (`123123…`, `EXAMPLEEXAMPLE`), or fewer than six distinct
/// characters in a value of sixteen or more. Long values (over 200 bytes,
/// e.g. base64 of binary key material, where zero runs are normal) are only
/// checked for references and elision.
pub fn looks_placeholder(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    if matches!(b[0], b'$' | b'[' | b'%' | b'{' | b'<' | b'#')
        || b.windows(2)
            .any(|w| matches!(w, [b'$', b'(' | b'{'] | [b'.', b'.']))
    {
        return true;
    }
    if b.len() > 200 {
        return false;
    }
    // a byte equal to the one `p` before it, `need` times in a row: a run of
    // six identical characters (p = 1), or twelve characters repeating with
    // period p
    for p in 1..=7usize {
        let need = if p == 1 { 5 } else { 12 - p };
        let mut same = 0;
        for (x, y) in b.iter().skip(p).zip(b) {
            same = if x == y { same + 1 } else { 0 };
            if same >= need {
                return true;
            }
        }
    }
    b.len() >= 16 && distinct_bytes(b) < 6
}

/// How many different byte values `b` holds.
fn distinct_bytes(b: &[u8]) -> usize {
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &c in b {
        if !seen[c as usize] {
            seen[c as usize] = true;
            distinct += 1;
        }
    }
    distinct
}

/// The value starts with a documented vendor token prefix: such a value is
/// judged by that vendor's format rule, not by the generic assignment rule.
pub fn vendor_token(s: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "xoxa-",
        "xoxb-",
        "xoxp-",
        "xoxr-",
        "xoxs-",
        "xoxe-",
        "xapp-",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "glrt-",
        "gldt-",
        "glptt-",
        "sk-",
        "sk_live_",
        "sk_test_",
        "rk_live_",
        "pk_live_",
        "AKIA",
        "ASIA",
        "AIza",
        "ops_",
        "hf_",
        "api_org_",
        "npm_",
        "pypi-",
        "dop_v1_",
        "doo_v1_",
        "shpat_",
        "shpss_",
        "SG.",
        "hvs.",
        "hvb.",
        "glc_",
        "glsa_",
        "pnu_",
        "sgp_",
        "pplx-",
        "gsk_",
        "r8_",
        "xai-",
        "lsv2_",
        "pcsk_",
        "eyJ",
    ];
    PREFIXES.iter().any(|p| s.starts_with(p))
}

/// Value contains letters and digits (random tokens do, words rarely).
pub fn mixed_alnum(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// A URL whose query or path carries data: a parameter value or path segment
/// of ≥ 24 characters that looks encoded (base64/hex/URL-encoded) or has high
/// entropy, or a query string longer than 100 bytes.
pub fn url_carries_data(url: &str) -> bool {
    let after_scheme = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => url,
    };
    let (host_path, query) = match after_scheme.split_once('?') {
        Some((hp, q)) => (hp, Some(q)),
        None => (after_scheme, None),
    };
    let path = host_path.split_once('/').map(|(_, p)| p).unwrap_or("");
    let looks_encoded = |v: &str| {
        let v = v.trim_end_matches(')');
        v.len() >= 24
            && (shannon_entropy(v) >= 3.5
                || v.matches('%').count() >= 4
                || v.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if let Some(q) = query {
        if q.len() > 100 {
            return true;
        }
        if q.split('&').any(|kv| {
            let v = kv.split_once('=').map(|(_, v)| v).unwrap_or(kv);
            looks_encoded(v)
        }) {
            return true;
        }
    }
    path.split('/').any(looks_encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The placeholder test as first written: a pass per check (the count
    /// of distinct bytes is shared, unchanged).
    fn reference_looks_placeholder(s: &str) -> bool {
        let b = s.as_bytes();
        if b.is_empty() {
            return true;
        }
        if matches!(b[0], b'$' | b'[' | b'%' | b'{' | b'<' | b'#')
            || s.contains("$(")
            || s.contains("${")
            || s.contains("..")
        {
            return true;
        }
        if b.len() > 200 {
            return false;
        }
        let mut run = 1;
        for w in b.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 1 };
            if run >= 6 {
                return true;
            }
        }
        for p in 2..=7usize {
            let mut same = 0;
            for i in p..b.len() {
                same = if b[i] == b[i - p] { same + 1 } else { 0 };
                if same + p >= 12 {
                    return true;
                }
            }
        }
        b.len() >= 16 && distinct_bytes(b) < 6
    }

    proptest! {
        /// The placeholder test equals the reference on tokens, repeats
        /// and template references.
        #[test]
        fn looks_placeholder_matches_the_reference(
            parts in proptest::collection::vec(
                prop_oneof![
                    "[A-Za-z0-9]{0,12}",
                    "[ab1$.({]{0,8}",
                    ("[A-Za-z0-9]{1,7}", 1usize..6, 0usize..7)
                        .prop_map(|(u, n, k)| u.repeat(n) + &u[..k.min(u.len())]),
                    ("[a-z0-9]", 1usize..9).prop_map(|(c, n)| c.repeat(n)),
                    Just("é".to_string()),
                ],
                0..8,
            ),
        ) {
            let s = parts.concat();
            prop_assert_eq!(looks_placeholder(&s), reference_looks_placeholder(&s));
        }

        /// The word lists are found ignoring ASCII case wherever they stand,
        /// as a lower-cased copy searched word by word finds them.
        #[test]
        fn placeholder_words_match_a_lowercase_search(
            parts in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(PLACEHOLDER_WORD_LIST.to_vec()).prop_map(str::to_string),
                    proptest::sample::select(TEMPLATE_WORD_LIST.to_vec()).prop_map(str::to_string),
                    "[A-Za-z0-9_*.<>${}-]{0,6}",
                    "[ÄÖÜäöüİı]{0,2}",
                ],
                0..6,
            ),
            upper in proptest::collection::vec(any::<bool>(), 0..64),
        ) {
            let s: String = parts
                .concat()
                .chars()
                .zip(upper.iter().copied().chain(std::iter::repeat(false)))
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let lower = s.to_ascii_lowercase();
            let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
            prop_assert_eq!(PLACEHOLDER_WORDS.is_match(&s), has(PLACEHOLDER_WORD_LIST));
            prop_assert_eq!(has_placeholder_word(&s), has(TEMPLATE_WORD_LIST));
        }
    }

    /// Change the last digit of a string by +1 (mod 10): off-by-one checksum.
    fn bump_last_digit(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        if let Some(i) = b.iter().rposition(|c| c.is_ascii_digit()) {
            b[i] = b'0' + (b[i] - b'0' + 1) % 10;
        }
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn luhn_and_cards() {
        for ok in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "2223003122003222",
            "36227206271667",
        ] {
            assert!(card(ok), "{ok}");
            assert!(!card(&bump_last_digit(ok)), "off by one {ok}");
        }
        assert!(!card("4111 1111-1111 1111"), "mixed separators");
        assert!(!card("1234567812345670"), "no IIN");
        assert!(!card("0000000000000000"));
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
    }

    #[test]
    fn iban_checks() {
        for ok in [
            "DE89370400440532013000",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
        ] {
            assert!(iban(ok).is_some(), "{ok}");
            assert!(iban(&bump_last_digit(ok)).is_none(), "off by one {ok}");
        }
        // trims at the country length
        assert_eq!(iban("DE89370400440532013000 and").map(|r| r.end), Some(22));
        assert!(iban("XX89370400440532013000").is_none());
        assert!(iban("DE8937040044053201300").is_none(), "short");
    }

    #[test]
    fn ssn_rules() {
        assert!(us_ssn("536-22-1234"));
        assert!(us_ssn("536 22 1234"));
        assert!(!us_ssn("000-22-1234"));
        assert!(!us_ssn("666-22-1234"));
        assert!(!us_ssn("900-22-1234"));
        assert!(!us_ssn("536-00-1234"));
        assert!(!us_ssn("536-22-0000"));
        assert!(!us_ssn("536-22 1234"), "mixed separators");
        assert!(!us_ssn("123-45-6789"), "advertising number");
    }

    #[test]
    fn national_ids() {
        assert!(de_tax_id("86095742719"));
        assert!(!de_tax_id(&bump_last_digit("86095742719")));
        assert!(!de_tax_id("12345678903"), "no repeated digit");
        assert!(fr_nir("2 69 05 49 588 157 80"));
        assert!(!fr_nir("2 69 05 49 588 157 81"));
        assert!(fr_nir("1 85 05 2A 123 456 34") || !fr_nir("1 85 05 2A 123 456 35"));
        assert!(es_dni("12345678Z"));
        assert!(!es_dni("12345678A"));
        assert!(es_dni("X1234567L"));
        assert!(!es_dni("X1234567M"));
        assert!(it_codice_fiscale("RSSMRA85T10A562S"));
        assert!(!it_codice_fiscale("RSSMRA85T10A562T"));
        assert!(nl_bsn("111222333"));
        assert!(!nl_bsn("111222334"));
        assert!(be_national_number("85.07.30-033.28"));
        assert!(!be_national_number("85.07.30-033.29"));
        assert!(be_national_number("00012556777") || be_national_number("00.01.25-567.77"));
        assert!(uk_nino("AB123456C"));
        assert!(uk_nino("AB 12 34 56 C"));
        assert!(!uk_nino("GB123456A"));
        assert!(!uk_nino("DA123456A"));
        assert!(!uk_nino("AB123456E"));
    }

    #[test]
    fn network_and_misc() {
        assert!(ipv4("192.168.1.20"));
        assert!(!ipv4("192.168.1.256"));
        assert!(!ipv4("01.2.3.4"));
        assert!(ipv6("2001:db8:85a3::8a2e:370:7334"));
        assert!(!ipv6("std::io"));
        assert!(!ipv6("a::b"));
        assert!(email("jane.doe@example.co.uk"));
        assert!(!email("jane..doe@example.com"));
        assert!(!email("jane@example"));
        assert!(phone("+1 415-555-0132"));
        assert!(!phone("2024-01-15"));
        assert!(!phone("111-111-1111"));
        assert!(date("12/03/1980"));
        assert!(date("1980-03-12"));
        assert!(date("12 March 1980"));
        assert!(!date("45/13/1980"));
        assert!(jwt(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjMifQ.sig"
        ));
        assert!(!jwt("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxMjMifQ.sig"));
        assert!(shannon_entropy("aaaa") < 0.01);
        assert!(shannon_entropy("aZ3kP9qL2mX7vB1n") > 3.9);
        assert!(!not_placeholder("xxxxxxxxxxxxxxxxxxxx"));
        assert!(!not_placeholder("your_api_key_goes_here"));
        assert!(not_placeholder("aZ3kP9qL2mX7vB1nQ8wE"));
        assert!(url_carries_data(
            "https://evil.example/log?d=U2VjcmV0IGRhdGEgZnJvbSB0aGUgY2hhdA=="
        ));
        assert!(!url_carries_data(
            "https://example.com/docs/getting-started?page=2"
        ));
    }

    #[test]
    fn placeholder_structure() {
        for p in [
            "$GITHUB_TOKEN",
            "[PASSWORD]",
            "${SECRET}",
            "$(vault read x)",
            "eyJzaWduSW5B..",
            "aaaaaa1bcdefgh",
            "12312312312312312312",
            "EXAMPLEEXAMPLEEXAMPLE",
            "aaaaaaaaaa1111111111bbbbbbbbbb2222222222",
        ] {
            assert!(looks_placeholder(p), "{p}");
        }
        for real in [
            "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A",
            "d45b6G86aBb0F2Cee943902dbaDBCFCFDD1dA089",
            "7a388b69018576d24b59331fd60aab0c",
        ] {
            assert!(!looks_placeholder(real), "{real}");
        }
        assert!(has_placeholder_word(
            "sha256~XXXXXXXXXX_PUT_YOUR_TOKEN_HERE"
        ));
        assert!(!has_placeholder_word("Zq8TwLm2Rv5Kx"));
    }

    #[test]
    fn vendor_prefixes_and_phone_shapes() {
        assert!(vendor_token("xoxp-1234-1234"));
        assert!(vendor_token("ghp_abc"));
        assert!(!vendor_token("Zq8TwLm2Rv5Kx"));
        assert!(phone("030 90182034"));
        assert!(!phone("03/06/1983"), "date");
        assert!(!phone("12.03.1980"), "date");
        assert!(!phone("092-03-9794"), "SSN layout");
    }

    #[test]
    fn legacy_jcb_cards() {
        for ok in ["180038337281747", "213192422982312"] {
            assert!(card(ok), "{ok}");
            assert!(!card(&bump_last_digit(ok)), "off by one {ok}");
        }
    }

    #[test]
    fn unknown_validator_rejects() {
        assert!(run("nope", "x").is_none());
    }
}
