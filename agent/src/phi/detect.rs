//! The detectors of the PHI scrubber: where protected health information sits in a text, by
//! category, with its normalized value; and the spans that must never be taken for PHI.
//!
//! Pure functions over `&str`. This module knows nothing of keys or tokens (`phi.rs` owns those)
//! and never allocates a copy of the text.
//!
//! # Why regular expressions
//!
//! The `regex` crate matches in linear time (no backtracking blow-up on hostile input), compiles
//! each pattern once per process, and a pattern with its format reference next to it is easier
//! to review than a hand-written scanner per format. What a regular expression cannot say
//! (checksums, "not preceded by a digit and a dot", the SSA's invalid number ranges) is checked in
//! plain code on each match, in the `accept` function of its detector.
//!
//! # Precision over recall where the format is ambiguous
//!
//! Evidence is full of numbers: timestamps, versions, byte counts, epoch seconds, ports, hashes.
//! So formats that only a label tells apart from such numbers (a bare 9-digit SSN, a bare
//! 10-digit phone number, an MRN, a member id, a date of birth) are scrubbed only when labelled
//! (`SSN:`, `phone`, `MRN`, `member id`, `DOB` …, also as a JSON key: `"dob": "…"`), while
//! formats that are distinctive on their own (`123-45-6789`, `(555) 123-4567`, e-mail, Medicare
//! MBI, a street address, a card number with a valid Luhn digit) are scrubbed anywhere.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};

use crate::phi::Category;

/// One piece of PHI found in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Byte offset of the first byte to replace.
    pub(crate) start: usize,
    /// Byte offset one past the last byte to replace.
    pub(crate) end: usize,
    pub(crate) category: Category,
    /// The value in the form that makes one person's data correlate across records (digits only
    /// for numbers, lower case for e-mail, ISO form for dates).
    pub(crate) normalized: String,
}

/// Returns the PHI in `text`, non-overlapping and ordered by position.
pub(crate) fn find(text: &str) -> Vec<Candidate> {
    if !could_contain_phi(text) {
        return Vec::new();
    }
    // One pass of every detector's gate says which detectors can match at all; most evidence
    // text passes none, and then neither the detectors nor the protected spans are searched
    // (a fifth of the time of running every detector in turn, on a typical finding).
    let hits = GATES.matches(text);
    if !hits.matched_any() {
        return Vec::new();
    }
    find_with(text, hits.iter())
}

/// Runs the detectors `detector_idxs` over `text` and resolves their overlaps.
fn find_with(text: &str, detector_idxs: impl Iterator<Item = usize>) -> Vec<Candidate> {
    let protected = Spans::new(protected_spans(text));
    let mut found: Vec<(u8, Candidate)> = Vec::new();
    for detector_idx in detector_idxs {
        DETECTORS[detector_idx].scan(text, &protected, &mut found);
    }
    // Lower ranks win overlaps (a phone number inside a labelled MRN is a phone number); within a
    // rank the earlier, then the longer, match wins.
    found.sort_by(|(rank_a, a), (rank_b, b)| {
        rank_a
            .cmp(rank_b)
            .then(a.start.cmp(&b.start))
            .then(b.end.cmp(&a.end))
    });
    // Accepted spans are disjoint, so the one starting last before a candidate's end is the only
    // one that can overlap it: a map from start to end answers in logarithmic time.
    let mut accepted: BTreeMap<usize, Candidate> = BTreeMap::new();
    for (_, candidate) in found {
        let overlaps = accepted
            .range(..candidate.end)
            .next_back()
            .is_some_and(|(_, it)| it.end > candidate.start);
        if !overlaps {
            accepted.insert(candidate.start, candidate);
        }
    }
    accepted.into_values().collect()
}

/// Returns true if and only if `text` holds the first word of a label (`patient`, `SSN`, `DOB`),
/// so that a value written after it could be labelled PHI.
pub(crate) fn could_start_a_label(text: &str) -> bool {
    LABEL_GATE.is_match(text)
}

/// Returns true if and only if `text` is exactly one token of ours (`[SSN:3f9a0c1b2d4e]`).
pub(crate) fn is_token(text: &str) -> bool {
    TOKEN_WHOLE.is_match(text)
}

/// Removes every token of ours from `text`.
pub(crate) fn without_tokens(text: &str) -> std::borrow::Cow<'_, str> {
    TOKEN.replace_all(text, "")
}

/// The value of `raw` in the normalized form of `category`, for values that did not come through a
/// detector (a JSON value under a labelled key such as `"ssn"`). Total: falls back to the trimmed,
/// lower-cased text with runs of non-alphanumerics folded to one space.
pub(crate) fn normalize(category: Category, raw: &str) -> String {
    let digits = || raw.chars().filter(char::is_ascii_digit).collect::<String>();
    match category {
        Category::Card | Category::Ssn => digits(),
        Category::Phone => normalize_phone(raw),
        Category::Dob => normalize_date(raw).unwrap_or_else(|| normalize_words(raw)),
        Category::Email => raw.trim().to_ascii_lowercase(),
        Category::Insurance | Category::Mbi | Category::Mrn => raw
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|it| it.to_ascii_uppercase())
            .collect(),
        Category::Address => normalize_words(raw),
    }
}

/// A cheap pre-filter: every detector needs an ASCII digit or an `@`, so text with neither (most
/// JSON keys, names, status words) is never scanned.
pub(crate) fn could_contain_phi(text: &str) -> bool {
    text.bytes().any(|it| it.is_ascii_digit() || it == b'@')
}

/// One pattern, the capture group that holds the value, and the checks a regex cannot express.
struct Detector {
    category: Category,
    /// Lower ranks win overlaps: distinctive formats (0), labelled ids (1), addresses (2).
    rank: u8,
    regex: Regex,
    /// A pattern that matches wherever `regex` matches (a label's first word, a suffix, a
    /// shorter digit pattern), small enough that all gates together make one small automaton.
    /// The whole detectors together would not: their union's lazy DFA outgrows its cache on
    /// varied input and the regex crate then falls back to a much slower engine.
    gate: String,
    /// The value must not continue a word, a dotted number or a dashed number on the left.
    isolate_left: bool,
    /// The same on the right.
    isolate_right: bool,
    /// Validates the value at `text[start..end]` and returns its normalized form, or `None` to
    /// reject the match (then the search resumes at the next word).
    accept: fn(text: &str, start: usize, end: usize) -> Option<String>,
}

impl Detector {
    fn scan(&self, text: &str, protected: &Spans, out: &mut Vec<(u8, Candidate)>) {
        let mut pos = 0;
        while pos <= text.len() {
            let Some(caps) = self.regex.captures_at(text, pos) else {
                break;
            };
            // Group 0 always exists; a labelled pattern names its value `v`, else the whole match
            // is the value.
            let whole = caps
                .get(0)
                .map_or((pos, text.len()), |it| (it.start(), it.end()));
            let (start, end) = caps.name("v").map_or(whole, |it| (it.start(), it.end()));
            let isolated = (!self.isolate_left || isolated_left(text, start))
                && (!self.isolate_right || isolated_right(text, end));
            let accepted = if isolated && start < end && !protected.overlaps(start, end) {
                (self.accept)(text, start, end)
            } else {
                None
            };
            pos = match accepted {
                Some(normalized) => {
                    let category = self.category;
                    let candidate = Candidate {
                        start,
                        end,
                        category,
                        normalized,
                    };
                    out.push((self.rank, candidate));
                    whole.1.max(whole.0 + 1)
                }
                // A rejected match may hide a valid one that starts inside it (`1-555-123-4567`
                // after a digit is no phone number, `555-123-4567` after `1-` may be), so resume
                // at the next place a value can start: after a character that is not part of a
                // word. Every pattern starts there (a word boundary, or left isolation), and
                // skipping the rest of the word keeps a long run of digits linear.
                None => next_word_start(text, whole.0),
            };
        }
    }
}

/// The first position after `from` that follows a character other than a letter, digit or `_`
/// (or the end of the text).
fn next_word_start(text: &str, from: usize) -> usize {
    let mut prev_is_word = true;
    for (idx, c) in text[from..].char_indices() {
        if idx > 0 && !prev_is_word {
            return from + idx;
        }
        prev_is_word = c.is_alphanumeric() || c == '_';
    }
    // Past the end stops the scan; the end itself is a start only after a non-word character,
    // and no pattern matches an empty value there.
    text.len() + 1
}

/// Spans sorted by start, with the largest end so far, for logarithmic overlap queries.
struct Spans {
    /// `(start, end, max end of this and every earlier span)`, sorted by start.
    spans: Vec<(usize, usize, usize)>,
}

impl Spans {
    fn new(mut raw: Vec<(usize, usize)>) -> Spans {
        raw.sort_unstable();
        let mut max_end = 0;
        let spans = raw
            .into_iter()
            .map(|(start, end)| {
                max_end = max_end.max(end);
                (start, end, max_end)
            })
            .collect();
        Spans { spans }
    }

    /// Returns true if and only if `[start, end)` overlaps a span: one of the spans that start
    /// before `end` ends after `start`.
    fn overlaps(&self, start: usize, end: usize) -> bool {
        let n_before_end = self.spans.partition_point(|it| it.0 < end);
        n_before_end > 0 && self.spans[n_before_end - 1].2 > start
    }
}

/// Spans that are never PHI whatever they contain: our own tokens (so scrubbing is idempotent),
/// Nix store paths (content hashes and package versions), UUIDs, and hex digests.
fn protected_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for regex in [&*TOKEN, &*NIX_STORE_PATH, &*UUID] {
        spans.extend(regex.find_iter(text).map(|it| (it.start(), it.end())));
    }
    // A hex digest has at least one letter; an all-digit run is a number and left to the
    // detectors (a card number, a labelled id).
    spans.extend(
        HEX_RUN
            .find_iter(text)
            .filter(|it| it.as_str().bytes().any(|b| b.is_ascii_alphabetic()))
            .map(|it| (it.start(), it.end())),
    );
    spans
}

/// True if the value starting at `start` does not continue something on its left: no letter,
/// digit or `_` right before it, and no `.`/`-` right before it that itself follows a digit
/// (`1.202.555.0143` is a version, `x-123-45-6789` is not a number run).
fn isolated_left(text: &str, start: usize) -> bool {
    let mut before = text[..start].chars().rev();
    match before.next() {
        None => true,
        Some(c) if c.is_alphanumeric() || c == '_' => false,
        Some('.' | '-') => !before.next().is_some_and(|it| it.is_ascii_digit()),
        Some(_) => true,
    }
}

/// The mirror of [`isolated_left`]: `555-123-4567-2` and `164.308` continue on the right.
fn isolated_right(text: &str, end: usize) -> bool {
    let mut after = text[end..].chars();
    match after.next() {
        None => true,
        Some(c) if c.is_alphanumeric() || c == '_' => false,
        Some('.' | '-') => !after.next().is_some_and(|it| it.is_ascii_digit()),
        Some(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns. All character classes are ASCII on purpose (`[0-9]`, not `\d`, which also matches
// Arabic-Indic and other digits); `B` is an ASCII word boundary.
// ---------------------------------------------------------------------------------------------

/// An ASCII word boundary.
const B: &str = r"(?-u:\b)";

/// What may stand between a label and its value: spaces, quotes (also JSON-escaped ones, so a
/// serialized `"mrn": "12345"` is still labelled), one of `: = # -`, and "is"/"was".
const SEP: &str =
    r#"[ \t]*[\\"'`]{0,3}[ \t]*[:=#-]?[ \t]*[\\"'`]{0,3}[ \t]*(?:(?:is|was)[ \t]+)?#?[ \t]*"#;

/// Joins the words of a label: `patient id`, `patient_id`, `patient-id`, `PatientID`.
const J: &str = r"[ \t_.-]*";

/// The suffix of an identifier label (`… id`, `… number`, `… no.`, `… #`).
const ID_SUFFIX: &str = r"(?:id|identifier|number|num|nbr|no\.?|#)";

/// Our tokens: a category and 12 hex digits of MAC in brackets (`[SSN:3f9a0c1b2d4e]`).
const TOKEN_PATTERN: &str =
    r"\[(?:ADDRESS|CARD|DOB|EMAIL|INSURANCE|MBI|MRN|PHONE|SSN):[0-9a-f]{12}\]";

static TOKEN: LazyLock<Regex> = LazyLock::new(|| compile(TOKEN_PATTERN));
static TOKEN_WHOLE: LazyLock<Regex> = LazyLock::new(|| compile(&format!("^{TOKEN_PATTERN}$")));

/// A Nix store path: `/nix/store/<32 base32 chars>-<name>`, up to the next delimiter. The name
/// holds package versions and dates (`nixos-system-clinic-25.11.20260510.8fd9daa`).
static NIX_STORE_PATH: LazyLock<Regex> =
    LazyLock::new(|| compile(r#"/nix/store/[0-9a-z]{32}(?:-[^\s"'`,;:()\[\]{}<>|]*)?"#));

/// RFC 9562 UUIDs in their 8-4-4-4-12 form (partition uuids, boot ids, dm-crypt's uuids).
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(
        "{B}[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}{B}"
    ))
});

/// Hex digests and key ids (sha256, git commits, LUKS2 dm uuids `CRYPT-LUKS2-<32 hex>-name`).
static HEX_RUN: LazyLock<Regex> = LazyLock::new(|| compile(&format!("{B}[0-9a-fA-F]{{16,}}{B}")));

static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(build_detectors);

/// The gates of [`DETECTORS`], in the same order, as one set.
static GATES: LazyLock<RegexSet> = LazyLock::new(|| {
    // Invariant: literals of this file, compiled by the unit tests.
    RegexSet::new(DETECTORS.iter().map(|it| it.gate.as_str())).expect("phi gates are valid")
});

/// The gates of the labelled detectors (those whose value is the group `v`), as one pattern.
static LABEL_GATE: LazyLock<Regex> = LazyLock::new(|| {
    let gates: Vec<String> = DETECTORS
        .iter()
        .filter(|it| it.regex.as_str().contains("(?P<v>"))
        .map(|it| format!("(?:{})", it.gate))
        .collect();
    compile(&gates.join("|"))
});

/// Compiles a pattern of this file.
fn compile(pattern: &str) -> Regex {
    // Invariant: every pattern is a literal of this file (or built from literals) and the unit
    // tests compile all of them, so a failure here is a bug caught before release, not input.
    Regex::new(pattern).expect("phi patterns are valid")
}

fn build_detectors() -> Vec<Detector> {
    // US state and territory codes (USPS Publication 28, appendix B), upper case only: in lower
    // case too many are English words.
    let state = "(?-i:A[KLRSZ]|C[AOT]|D[CE]|FL|G[AU]|HI|I[ADLN]|K[SY]|LA|M[ADEINOPST]|N[CDEHJMVY]|O[HKR]|P[AR]|RI|S[CD]|T[NX]|UT|V[AIT]|W[AIVY])";
    // A 5-digit ZIP code, optionally ZIP+4.
    let zip = "[0-9]{5}(?:-[0-9]{4})?";
    // Street suffixes (USPS Publication 28, appendix C1): full words in any case; abbreviations
    // only capitalized or in capitals, because `st`, `ct`, `dr`, `ln`, `pl` are also words in
    // tool output (nft's `ct state`, `ln -s`).
    let suffix = "(?:(?i:street|avenue|road|boulevard|lane|drive|court|place|terrace|circle|parkway|highway|square|trail|plaza|crescent|alley|expressway|freeway)|(?-i:St|ST|Ave|AVE|Av|Rd|RD|Blvd|BLVD|Ln|LN|Dr|DR|Ct|CT|Pl|PL|Way|WAY|Ter|TER|Cir|CIR|Pkwy|PKWY|Hwy|HWY|Sq|SQ|Trl|TRL|Plz|PLZ|Cres|Aly|Expy|Fwy))";
    let unit = r"(?:,?[ \t]+(?i:apt|apartment|suite|ste|unit|bldg|building|floor|fl|room|rm)\.?[ \t]*#?[ \t]*[A-Za-z0-9-]{1,8}|,?[ \t]*#[ \t]*[A-Za-z0-9-]{1,8})";
    let city_state_zip =
        format!(r"(?:,[ \t]*[A-Za-z][A-Za-z .'-]{{0,30}}?,?[ \t]+{state}{B}(?:[ \t]+{zip})?)");
    // The value of a labelled id (MRN, member id): up to five letters, then a digit, then letters,
    // digits and dashes; `accept_id` asks for three digits in all.
    let id_value = "[A-Za-z]{0,5}-?[0-9][A-Za-z0-9-]{2,24}";
    // Month names and their abbreviations, for dates of birth.
    let month = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?";
    // Dates as people write them: ISO (optionally with a time), US month-first with `/`, `-` or
    // `.`, month names either side of the day, and 8 digits (YYYYMMDD or MMDDYYYY).
    let date = format!(
        r"(?:[0-9]{{4}}[-/.][0-9]{{1,2}}[-/.][0-9]{{1,2}}(?:T[0-9]{{2}}:[0-9]{{2}}(?::[0-9]{{2}}(?:\.[0-9]{{1,9}})?)?(?:Z|[+-][0-9]{{2}}:?[0-9]{{2}})?)?|[0-9]{{1,2}}[-/.][0-9]{{1,2}}[-/.](?:[0-9]{{4}}|[0-9]{{2}})|{month}[ \t]+[0-9]{{1,2}}(?:st|nd|rd|th)?,?[ \t]+[0-9]{{4}}|[0-9]{{1,2}}(?:st|nd|rd|th)?[ \t-]+{month},?[ \t-]+(?:[0-9]{{4}}|[0-9]{{2}})|[0-9]{{8}})"
    );
    // NANP numbers (North American Numbering Plan): area code and exchange start with 2-9.
    let extension = r"(?:[ \t]*(?i:x|ext\.?|extension)[ \t]*[0-9]{1,6})?";
    let phone_any = format!(
        r"(?:\+?1[ \t.-]?)?(?:\([2-9][0-9]{{2}}\)[ \t.-]?|[2-9][0-9]{{2}}[ \t.-]?)?[2-9][0-9]{{2}}[ \t.-]?[0-9]{{4}}{extension}"
    );
    let phone_distinct = format!(
        r"(?:(?:\+1[ \t.-]?)?\([2-9][0-9]{{2}}\)[ \t]?[2-9][0-9]{{2}}[ \t.-][0-9]{{4}}|(?:\+?1-)?[2-9][0-9]{{2}}-[2-9][0-9]{{2}}-[0-9]{{4}}|(?:\+?1\.)?[2-9][0-9]{{2}}\.[2-9][0-9]{{2}}\.[0-9]{{4}}|\+1[ \t.-]?[2-9][0-9]{{2}}[ \t.-]?[2-9][0-9]{{2}}[ \t.-]?[0-9]{{4}}){extension}"
    );
    // Medicare Beneficiary Identifier (CMS, "Understanding the MBI format"): 11 characters,
    // positions 1 (1-9), 4, 7, 10, 11 (0-9) numeric; 2, 5, 8, 9 alphabetic; 3 and 6 either;
    // letters exclude S, L, O, I, B, Z. Printed with or without dashes after 4 and 7.
    let mbi_letter = "[AC-HJKMNP-RT-Y]";
    let mbi_either = "[AC-HJKMNP-RT-Y0-9]";
    let mbi = format!(
        "[1-9]{mbi_letter}{mbi_either}[0-9]-?{mbi_letter}{mbi_either}[0-9]-?{mbi_letter}{mbi_letter}[0-9]{{2}}"
    );
    // The older Health Insurance Claim Number: an SSN and a 1-2 character beneficiary code.
    let hicn = "[0-9]{3}-?[0-9]{2}-?[0-9]{4}[A-Za-z][0-9A-Za-z]?";

    let labelled = |label: &str, value: &str| -> Regex {
        compile(&format!(
            "(?i){B}(?:{label})(?:{B}|[^A-Za-z0-9_]){SEP}(?P<v>{value})"
        ))
    };
    vec![
        // US Social Security number, area-group-serial (SSA, "Social Security Number
        // Randomization", 2011: no area 000, 666 or 900-999; never group 00 or serial 0000). Unlabelled only with dashes, which no timestamp, version or
        // count uses; labelled also with spaces or none.
        Detector {
            category: Category::Ssn,
            rank: 0,
            gate: r"[0-9]{3}-[0-9]{2}-[0-9]{4}".to_string(),
            regex: compile("[0-9]{3}-[0-9]{2}-[0-9]{4}"),
            isolate_left: true,
            isolate_right: true,
            accept: accept_ssn,
        },
        Detector {
            category: Category::Ssn,
            rank: 0,
            gate: r"(?i)(?-u:\b)(?:ssn|ss#|social)".to_string(),
            regex: labelled(
                &format!(r"ssn|ss#|social{J}security(?:{J}{ID_SUFFIX})?"),
                "[0-9]{3}[ -]?[0-9]{2}[ -]?[0-9]{4}",
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_ssn,
        },
        // US phone numbers in the forms that nothing else uses: `(555) 123-4567`,
        // `555-123-4567`, `555.123.4567`, `+1 555 123 4567`, `+15551234567`, with an extension.
        Detector {
            category: Category::Phone,
            rank: 0,
            gate: r"\([2-9][0-9]{2}\)|[0-9]{3}[-.][0-9]{3}[-.][0-9]{4}|\+1".to_string(),
            regex: compile(&phone_distinct),
            isolate_left: true,
            isolate_right: true,
            accept: accept_phone,
        },
        // Labelled, any NANP form, also `555 123 4567`, `5551234567` and 7-digit `555-0123`.
        Detector {
            category: Category::Phone,
            rank: 0,
            gate: r"(?i)(?-u:\b)(?:phone|tel|cell|mobile|fax|contact|callback|home|work)".to_string(),
            regex: labelled(
                &format!(
                    r"phone|telephone|tel\.?|cell(?:{J}phone)?|mobile(?:{J}phone)?|fax|contact{J}(?:number|no\.?|#)|callback(?:{J}number)?|home{J}phone|work{J}phone"
                ),
                &phone_any,
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_phone,
        },
        // E-mail addresses (RFC 5321 limits: 64-byte local part, 255-byte domain), not systemd
        // instance names (`getty@tty1.service`), URL user info (`ssh://borg@nas.example/`) or
        // scp-style targets (`backup@nas.example:/srv`).
        Detector {
            category: Category::Email,
            rank: 0,
            gate: "@".to_string(),
            regex: compile(
                "[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.){1,8}[A-Za-z]{2,24}",
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_email,
        },
        Detector {
            category: Category::Mbi,
            rank: 0,
            gate: format!("[1-9]{mbi_letter}{mbi_either}[0-9]-?{mbi_letter}"),
            regex: compile(&mbi),
            isolate_left: true,
            isolate_right: true,
            accept: accept_mbi,
        },
        // Labelled Medicare ids: an MBI in any case, or an old HICN.
        Detector {
            category: Category::Mbi,
            rank: 0,
            gate: r"(?i)(?-u:\b)(?:medicare|mbi|hic)".to_string(),
            regex: labelled(
                &format!(
                    r"medicare(?:{J}(?:beneficiary{J})?(?:{ID_SUFFIX}|card(?:{J}(?:number|no\.?|#))?))?|mbi|hicn|hic{J}(?:number|no\.?|#)"
                ),
                &format!("(?-i:{hicn})|{mbi}"),
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_medicare,
        },
        // Payment card numbers: 16 digits in groups of four, Amex 4-6-5, or 13-19 digits in one
        // run; issuer prefix and length (ISO/IEC 7812 ranges of the big networks) and the Luhn
        // check digit must both hold, so byte counts and microsecond timestamps do not match.
        Detector {
            category: Category::Card,
            rank: 0,
            gate: "[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}|[0-9]{4}[ -][0-9]{6}".to_string(),
            regex: compile(
                "[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{4}|[0-9]{4} [0-9]{4} [0-9]{4} [0-9]{4}|3[47][0-9]{2}[ -][0-9]{6}[ -][0-9]{5}|[0-9]{13,19}",
            ),
            isolate_left: true,
            isolate_right: true,
            accept: accept_card,
        },
        // Dates of birth, only when labelled: an unlabelled date is a timestamp in evidence.
        Detector {
            category: Category::Dob,
            rank: 0,
            gate: r"(?i)(?-u:\b)(?:dob|d\.o\.b|date|birth|born)".to_string(),
            regex: labelled(
                &format!(
                    r"dob|d\.o\.b\.?|date{J}of{J}birth|birth{J}(?:date|day)|born(?:[ \t]+on)?"
                ),
                &date,
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_dob,
        },
        // Medical record numbers and patient ids, only when labelled (their formats are local to
        // each EHR).
        Detector {
            category: Category::Mrn,
            rank: 1,
            gate: r"(?i)(?-u:\b)(?:mr|medical|patient|pt|chart)".to_string(),
            regex: labelled(
                &format!(
                    r"mrn|mr[ \t]*#|mr{J}(?:number|num|no\.?)|medical{J}records?(?:{J}{ID_SUFFIX})?|patient{J}{ID_SUFFIX}|pt\.?{J}(?:id|#|no\.?)|chart{J}{ID_SUFFIX}"
                ),
                id_value,
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_id,
        },
        // Health plan member, subscriber, policy and Medicaid ids, only when labelled.
        Detector {
            category: Category::Insurance,
            rank: 1,
            gate: r"(?i)(?-u:\b)(?:member|subscriber|insur|policy|medicaid|beneficiary|medicare|health)".to_string(),
            regex: labelled(
                &format!(
                    r"(?:member|subscriber|insurance|insured|policy|policyholder|medicaid|beneficiary|medicare|health{J}plan(?:{J}beneficiary)?)(?:{J}{ID_SUFFIX})|insurance{J}(?:member{J})?id|medicaid"
                ),
                id_value,
            ),
            isolate_left: false,
            isolate_right: true,
            accept: accept_id,
        },
        // US street addresses: house number, optional direction, one to four name words, a
        // street suffix, then optionally a unit and `, City, ST 12345`.
        Detector {
            category: Category::Address,
            rank: 2,
            gate: suffix.to_string(),
            regex: compile(&format!(
                r"{B}[0-9]{{1,6}}[A-Za-z]?[ \t]+(?:(?i:north|south|east|west)[ \t]+|(?:[NSEW]|NE|NW|SE|SW)\.?[ \t]+)?(?:[A-Za-z0-9][A-Za-z0-9'.-]{{0,30}}[ \t]+){{1,4}}?{suffix}{B}\.?{unit}?{city_state_zip}?"
            )),
            isolate_left: true,
            isolate_right: true,
            accept: accept_street,
        },
        // A city, state and ZIP line on its own (`Springfield, IL 62704`), and PO boxes.
        Detector {
            category: Category::Address,
            rank: 2,
            gate: format!(r",[ \t]*{state}[ \t]+[0-9]{{5}}"),
            regex: compile(&format!(
                r"{B}[A-Z][A-Za-z.'-]{{1,25}}(?:[ \t]+[A-Z][A-Za-z.'-]{{1,25}}){{0,2}},[ \t]*{state}[ \t]+{zip}"
            )),
            isolate_left: true,
            isolate_right: true,
            accept: accept_words,
        },
        Detector {
            category: Category::Address,
            rank: 2,
            gate: "(?i)box".to_string(),
            regex: compile(&format!(
                r"(?i){B}p\.?[ \t]?o\.?[ \t]*box[ \t]+#?[0-9]{{1,7}}"
            )),
            isolate_left: true,
            isolate_right: true,
            accept: accept_words,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Acceptance and normalization.
// ---------------------------------------------------------------------------------------------

fn accept_ssn(text: &str, start: usize, end: usize) -> Option<String> {
    let digits: String = text[start..end]
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if digits.len() != 9 {
        return None;
    }
    let (area, group, serial) = (&digits[0..3], &digits[3..5], &digits[5..9]);
    // The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000; such numbers are
    // placeholders or something else (`000-00-0000`).
    let valid = area != "000"
        && area != "666"
        && !area.starts_with('9')
        && group != "00"
        && serial != "0000";
    valid.then_some(digits)
}

fn accept_phone(text: &str, start: usize, end: usize) -> Option<String> {
    let res = normalize_phone(&text[start..end]);
    matches!(res.len(), 7 | 10).then_some(res)
}

/// Digits of the number without the country code `1` and without the extension.
fn normalize_phone(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    let main = match lower.find(['x', 'e']) {
        Some(idx) => &lower[..idx],
        None => &lower[..],
    };
    let digits: String = main.chars().filter(char::is_ascii_digit).collect();
    match digits.strip_prefix('1') {
        Some(rest) if rest.len() == 10 => rest.to_string(),
        _ => digits,
    }
}

/// The domain labels systemd gives unit types: `name@instance.service` is a unit, not a mailbox.
const SYSTEMD_UNIT_TYPES: [&str; 11] = [
    "automount",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "socket",
    "swap",
    "target",
    "timer",
];

fn accept_email(text: &str, start: usize, end: usize) -> Option<String> {
    let value = &text[start..end];
    let tld = value
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if SYSTEMD_UNIT_TYPES.contains(&tld.as_str()) {
        return None;
    }
    // scp-style `user@host:path` and `user@host:port`.
    let mut after = text[end..].chars();
    if after.next() == Some(':') && after.next().is_some_and(|it| !it.is_whitespace()) {
        return None;
    }
    // URL user info: `scheme://[user[:password]@]host`, i.e. a `://` earlier in the same word with
    // no `/`, `?` or `#` between it and the address.
    // Looking back at most 256 bytes (a scheme and a user name are short) keeps many addresses
    // in one long word linear.
    let mut window_start = start.saturating_sub(256);
    while !text.is_char_boundary(window_start) {
        window_start += 1;
    }
    let word_start = text[window_start..start]
        .char_indices()
        .rev()
        .find(|(_, it)| it.is_whitespace() || "\"'`<>()[]{},;".contains(*it))
        .map_or(window_start, |(idx, it)| window_start + idx + it.len_utf8());
    if let Some(scheme_end) = text[word_start..start].rfind("://") {
        let authority = &text[word_start + scheme_end + 3..start];
        if !authority.contains(['/', '?', '#']) {
            return None;
        }
    }
    Some(value.to_ascii_lowercase())
}

fn accept_mbi(text: &str, start: usize, end: usize) -> Option<String> {
    let value = &text[start..end];
    // Dashes come both (after positions 4 and 7) or not at all.
    let n_dashes = value.matches('-').count();
    if !(n_dashes == 0 || n_dashes == 2) {
        return None;
    }
    Some(normalize(Category::Mbi, value))
}

fn accept_medicare(text: &str, start: usize, end: usize) -> Option<String> {
    let value = &text[start..end];
    // An MBI has a letter in position 2, so nine leading digits make it a HICN, whose first nine
    // digits are an SSN and follow the SSN rules.
    let is_hicn = value
        .chars()
        .filter(|it| *it != '-')
        .take(9)
        .all(|it| it.is_ascii_digit());
    if is_hicn {
        let ssn_end = value
            .char_indices()
            .filter(|(_, it)| it.is_ascii_digit())
            .nth(8)
            .map(|(idx, _)| start + idx + 1)?;
        accept_ssn(text, start, ssn_end)?;
        return Some(normalize(Category::Mbi, value));
    }
    accept_mbi(text, start, end)
}

/// A labelled MRN or member id: three digits at least, so `patient id: n/a` or `policy #1` are
/// not taken for one.
fn accept_id(text: &str, start: usize, end: usize) -> Option<String> {
    let value = &text[start..end];
    let n_digits = value.chars().filter(char::is_ascii_digit).count();
    (n_digits >= 3).then(|| normalize(Category::Mrn, value))
}

fn accept_card(text: &str, start: usize, end: usize) -> Option<String> {
    let value = &text[start..end];
    let digits: Vec<u32> = value.chars().filter_map(|it| it.to_digit(10)).collect();
    let prefix = |n: usize| -> u32 { digits.iter().take(n).fold(0, |acc, it| acc * 10 + it) };
    let issuer_ok = match digits.len() {
        13 | 19 => prefix(1) == 4,
        15 => matches!(prefix(2), 34 | 37),
        16 => {
            prefix(1) == 4
                || (51..=55).contains(&prefix(2))
                || (2221..=2720).contains(&prefix(4))
                || prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
        }
        _ => false,
    };
    // `4096 4096 4096 4096` is a table of block sizes, not a card.
    let groups: Vec<&str> = value.split([' ', '-']).collect();
    let repeated = groups.len() > 1 && groups.iter().all(|it| *it == groups[0]);
    (issuer_ok && !repeated && luhn_valid(&digits)).then(|| {
        digits
            .iter()
            .map(|it| char::from(b'0' + *it as u8))
            .collect()
    })
}

/// The Luhn (mod 10) check of ISO/IEC 7812-1: doubling every second digit from the right.
fn luhn_valid(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(idx, &digit)| match idx % 2 {
            1 if digit * 2 > 9 => digit * 2 - 9,
            1 => digit * 2,
            _ => digit,
        })
        .sum();
    sum.is_multiple_of(10)
}

fn accept_dob(text: &str, start: usize, end: usize) -> Option<String> {
    normalize_date(&text[start..end])
}

/// `YYYY-MM-DD` (or `YY-MM-DD` for two-digit years) for the date forms of the DOB pattern, so
/// `03/14/1961`, `1961-03-14` and `March 14, 1961` give one token; `None` if it is no date.
fn normalize_date(raw: &str) -> Option<String> {
    let mut numbers: Vec<&str> = Vec::new();
    let mut month_name: Option<u32> = None;
    let bytes = raw.as_bytes();
    let mut idx = 0;
    while idx < bytes.len() {
        let start = idx;
        if bytes[idx].is_ascii_digit() {
            while idx < bytes.len() && bytes[idx].is_ascii_digit() {
                idx += 1;
            }
            numbers.push(&raw[start..idx]);
        } else if bytes[idx].is_ascii_alphabetic() {
            while idx < bytes.len() && bytes[idx].is_ascii_alphabetic() {
                idx += 1;
            }
            month_name = month_name.or_else(|| month_number(&raw[start..idx]));
        } else {
            idx += 1;
        }
    }
    if let [single] = numbers[..] {
        if single.len() != 8 {
            return None;
        }
        // Eight digits: YYYYMMDD if it starts like a year of birth, else MMDDYYYY.
        numbers = if single.starts_with("19") || single.starts_with("20") {
            vec![&single[0..4], &single[4..6], &single[6..8]]
        } else {
            vec![&single[0..2], &single[2..4], &single[4..8]]
        };
    }
    let parse = |it: &str| it.parse::<u32>().ok();
    let (year, mut month, mut day) = match (month_name, &numbers[..]) {
        (Some(month), [first, second, ..]) => {
            // `March 14, 1961` or `14 March 1961`: the 4-digit (or the last) number is the year.
            let (day, year) = if second.len() == 4 || first.len() < 3 {
                (first, second)
            } else {
                (second, first)
            };
            (*year, month, parse(day)?)
        }
        (None, [first, second, third, ..]) if first.len() == 4 => {
            (*first, parse(second)?, parse(third)?)
        }
        (None, [first, second, third, ..]) => (*third, parse(first)?, parse(second)?),
        _ => return None,
    };
    // Day-first dates (`14/03/1961`) are not US style, but unambiguous when the first number
    // cannot be a month.
    if month > 12 && day <= 12 && month_name.is_none() {
        std::mem::swap(&mut month, &mut day);
    }
    let valid = (1..=12).contains(&month) && (1..=31).contains(&day) && matches!(year.len(), 2 | 4);
    valid.then(|| format!("{year}-{month:02}-{day:02}"))
}

/// The month of an English month name or abbreviation (`Mar`, `march`, `Sept`).
fn month_number(word: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let lower = word.to_ascii_lowercase();
    if lower.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|name| name.starts_with(&lower))
        .map(|idx| idx as u32 + 1)
}

/// Words that never stand inside a street name, so `3 rules in the same Way` is no address.
const STOP_WORDS: [&str; 30] = [
    "a", "all", "an", "and", "any", "are", "as", "at", "be", "by", "each", "for", "from", "in",
    "into", "is", "it", "no", "not", "of", "on", "or", "out", "per", "than", "that", "the", "to",
    "via", "with",
];

fn accept_street(text: &str, start: usize, end: usize) -> Option<String> {
    let value = &text[start..end];
    let has_stop_word = value
        .split(|it: char| !it.is_ascii_alphanumeric() && it != '\'')
        .any(|word| STOP_WORDS.contains(&word.to_ascii_lowercase().as_str()));
    if has_stop_word {
        return None;
    }
    accept_words(text, start, end)
}

fn accept_words(text: &str, start: usize, end: usize) -> Option<String> {
    Some(normalize_words(&text[start..end]))
}

/// Lower case, runs of anything but letters and digits folded to one space, trimmed.
fn normalize_words(raw: &str) -> String {
    raw.split(|it: char| !it.is_alphanumeric())
        .filter(|it| !it.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn found(text: &str) -> Vec<(Category, &str, String)> {
        find(text)
            .into_iter()
            .map(|it| (it.category, &text[it.start..it.end], it.normalized))
            .collect()
    }

    #[test]
    fn every_pattern_compiles() {
        assert!(DETECTORS.len() > 10);
        assert!(is_token("[SSN:0123456789ab]"));
        assert!(!is_token("[SSN:0123456789ab] "));
    }

    #[test]
    fn labelled_values_keep_their_label() {
        assert_eq!(
            found("MRN: 00123456"),
            vec![(Category::Mrn, "00123456", "00123456".to_string())]
        );
        assert_eq!(
            found(r#"{"patient_id": "P-00123"}"#),
            vec![(Category::Mrn, "P-00123", "P00123".to_string())]
        );
    }

    #[test]
    fn dates_normalize_to_iso() {
        for raw in [
            "03/14/1961",
            "1961-03-14",
            "March 14, 1961",
            "14 Mar 1961",
            "19610314",
            "14/03/1961",
            "Mar. 14th, 1961",
        ] {
            assert_eq!(normalize_date(raw).as_deref(), Some("1961-03-14"), "{raw}");
        }
        assert_eq!(normalize_date("13/13/1961"), None);
        assert_eq!(normalize_date("1961"), None);
    }

    #[test]
    fn phones_normalize_to_ten_digits() {
        for raw in [
            "(217) 555-0143",
            "217-555-0143",
            "+1 217 555 0143",
            "1-217-555-0143",
            "217.555.0143 x12",
        ] {
            assert_eq!(normalize_phone(raw), "2175550143", "{raw}");
        }
    }

    #[test]
    fn luhn() {
        let digits = |text: &str| {
            text.chars()
                .filter_map(|it| it.to_digit(10))
                .collect::<Vec<_>>()
        };
        assert!(luhn_valid(&digits("4111111111111111")));
        assert!(!luhn_valid(&digits("4111111111111112")));
        assert!(luhn_valid(&digits("378282246310005")));
    }

    /// Text made of PHI, near-misses and the separators between them.
    fn phi_like_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[0-9]{1,12}",
            "[-. /:()#+@,]",
            "[ \t\n]{1,2}",
            "[A-Za-z]{1,8}",
            "(SSN|MRN|DOB|phone|member id|Medicare #|mbi|pt|patient #|born|box|tel)[ :#]{0,2}",
            "(Main St|Oak Ave|elm street|Way|Dr\\.)",
            ", (IL|NY|CA) [0-9]{5}",
            "[0-9][A-Z]{2}[0-9]-?[A-Z]{2}[0-9]-?[A-Z]{2}[0-9]{2}",
            "[a-z.]{1,8}@[a-z]{1,8}\\.(org|service|com)",
            "\\PC{1,3}",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|it| it.concat())
    }

    proptest! {
        #[test]
        fn gates_never_hide_a_detector(text in phi_like_text()) {
            prop_assert_eq!(find(&text), find_with(&text, 0..DETECTORS.len()));
        }
    }

    #[test]
    fn every_gate_matches_what_its_detector_matches_in_the_corpus() {
        let corpus = include_str!("../../tests/fixtures/phi/phi.txt");
        for line in corpus.lines().filter(|it| !it.starts_with('#')) {
            let text = line.replace(['«', '»'], "");
            assert_eq!(find(&text), find_with(&text, 0..DETECTORS.len()), "{text}");
        }
    }

    #[test]
    fn isolation() {
        assert!(isolated_left("a 1", 2));
        assert!(!isolated_left("a1", 1));
        assert!(!isolated_left("1.2", 2));
        assert!(isolated_left("x-2", 2));
        assert!(isolated_right("2.", 1));
        assert!(!isolated_right("2.3", 1));
        assert!(isolated_left("é 1", "é ".len()));
    }
}
