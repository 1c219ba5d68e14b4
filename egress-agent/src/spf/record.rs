//! SPF records as published: picking the SPF record out of TXT records, the strict syntax
//! check, the names a record refers to, and the record to publish.

use std::net::Ipv4Addr;

use mail_auth::{
    common::parse::TxtRecordParser,
    spf::{Macro, Mechanism, Spf},
};
use serde::Serialize;

/// What a name publishes in TXT records that start with `v=spf1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "records", rename_all = "snake_case")]
pub enum Published {
    /// No SPF record (the name may still exist).
    None,
    /// Exactly one SPF record.
    One(String),
    /// More than one: a permanent error for receivers (RFC 7208 4.5).
    Many(Vec<String>),
    /// The lookup failed (timeout, refused, ...).
    Error(String),
}

impl Published {
    /// Picks the SPF records out of a name's TXT records (each already joined from its
    /// character strings). The version tag is matched without regard to case and must be
    /// followed by a space or the end (RFC 7208 4.5).
    pub fn from_txt<S: AsRef<str>>(txt: &[S]) -> Published {
        let mut spf: Vec<String> = txt
            .iter()
            .map(|t| t.as_ref().trim())
            .filter(|t| {
                t.len() >= 6
                    && t.is_char_boundary(6)
                    && t[..6].eq_ignore_ascii_case("v=spf1")
                    && (t.len() == 6 || t.as_bytes()[6] == b' ')
            })
            .map(str::to_owned)
            .collect();
        match spf.len() {
            0 => Published::None,
            1 => Published::One(spf.remove(0)),
            _ => Published::Many(spf),
        }
    }
}

/// A record's `include:` and `redirect=` targets that can be followed (literal domains; a
/// target with macros depends on the sender and cannot be resolved ahead of time).
pub fn references(record: &str) -> Vec<String> {
    let Ok(spf) = Spf::parse(record.as_bytes()) else {
        return Vec::new();
    };
    spf.directives
        .iter()
        .filter_map(|d| match &d.mechanism {
            Mechanism::Include { macro_string } => literal(macro_string),
            _ => None,
        })
        .chain(spf.redirect.as_ref().and_then(literal))
        .collect()
}

pub(super) fn literal(m: &Macro) -> Option<String> {
    match m {
        Macro::Literal(b) => std::str::from_utf8(b).ok().map(normalise),
        _ => None,
    }
}

pub(super) fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a record's syntax: mail-auth's parser, plus the checks it leaves out (it reads
/// `ip4:300.1.1.1` as 255.1.1.1, clamps `/33`, skips unknown mechanisms), which strict
/// receivers answer with permerror (RFC 7208 4.6.1, 5.6).
pub fn validate(record: &str) -> Result<(), String> {
    Spf::parse(record.as_bytes()).map_err(|e| e.to_string())?;
    for t in record.split_whitespace().skip(1) {
        let body = t.trim_start_matches(['+', '-', '~', '?']);
        let name_end = body.find([':', '/', '=']).unwrap_or(body.len());
        let (name, rest) = body.split_at(name_end);
        if rest.starts_with('=') {
            continue; // a modifier; mail-auth checks the known ones
        }
        let value = rest.strip_prefix(':').unwrap_or(rest);
        match name.to_ascii_lowercase().as_str() {
            "all" | "include" | "a" | "mx" | "ptr" | "exists" => {}
            "ip4" => {
                let (addr, len) = value.split_once('/').unwrap_or((value, "32"));
                if addr.parse::<Ipv4Addr>().is_err() || !len.parse::<u8>().is_ok_and(|l| l <= 32) {
                    return Err(format!("{t}: not an IPv4 network"));
                }
            }
            "ip6" => {
                let (addr, len) = value.split_once('/').unwrap_or((value, "128"));
                if addr.parse::<std::net::Ipv6Addr>().is_err()
                    || !len.parse::<u8>().is_ok_and(|l| l <= 128)
                {
                    return Err(format!("{t}: not an IPv6 network"));
                }
            }
            _ => return Err(format!("{t}: unknown mechanism")),
        }
    }
    Ok(())
}

/// The record to publish so that `missing` IPs pass: the current record (when it is one valid
/// record) with `ip4:` terms for them right after the version (so they match before any
/// lookup), or a fresh `v=spf1 ip4:... ~all`.
pub fn suggest_record(current: &Published, missing: &[Ipv4Addr]) -> String {
    let terms: Vec<String> = missing.iter().map(|ip| format!("ip4:{ip}")).collect();
    match current {
        Published::One(text) if validate(text).is_ok() => {
            let rest = text[6..].trim();
            let mut out = String::from("v=spf1");
            for t in terms.iter().chain(
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                out.push(' ');
                out.push_str(t);
            }
            out
        }
        _ => format!("v=spf1 {} ~all", terms.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_spf_record_among_txt_records() {
        assert_eq!(
            Published::from_txt(&["google-site-verification=x", "v=spf1 ip4:192.0.2.10 ~all"]),
            Published::One("v=spf1 ip4:192.0.2.10 ~all".into())
        );
        assert_eq!(
            Published::from_txt(&["V=SPF1 -all"]),
            Published::One("V=SPF1 -all".into())
        );
        assert_eq!(Published::from_txt(&["v=spf10 -all"]), Published::None);
        assert_eq!(Published::from_txt::<&str>(&[]), Published::None);
        assert_eq!(
            Published::from_txt(&["v=spf1 -all", "v=spf1 ~all"]),
            Published::Many(vec!["v=spf1 -all".into(), "v=spf1 ~all".into()])
        );
    }

    #[test]
    fn validates_what_mail_auth_reads_leniently() {
        assert_eq!(
            validate("v=spf1 ip4:192.0.2.10 ip6:2001:db8::/32 a mx/24 -all"),
            Ok(())
        );
        assert_eq!(
            validate("v=spf1 include:_spf.example.net redirect=x.example"),
            Ok(())
        );
        assert!(validate("v=spf1 ip4:192.0.2.10 ~al").is_err());
        assert!(validate("v=spf1 ip4:300.1.1.1 ~all").is_err());
        assert!(validate("v=spf1 ip4:192.0.2.10/33 ~all").is_err());
        assert!(validate("v=spf1 ip6:2001:db8::/129 ~all").is_err());
        assert_eq!(
            validate("v=spf1 bogus:x -all"),
            Err("bogus:x: unknown mechanism".into())
        );
    }

    #[test]
    fn follows_literal_includes_and_redirects_only() {
        assert_eq!(
            references("v=spf1 include:_spf.Example.com. a mx include:%{d}.x redirect=r.example"),
            vec!["_spf.example.com".to_owned(), "r.example".to_owned()]
        );
        assert!(references("v=spf1 ip4:300.0.0.1 -all").is_empty());
    }

    #[test]
    fn suggestion_adds_missing_ips_in_front() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            suggest_record(
                &Published::One("v=spf1 include:_spf.example.net ~all".into()),
                &[ip("192.0.2.100")]
            ),
            "v=spf1 ip4:192.0.2.100 include:_spf.example.net ~all"
        );
        assert_eq!(
            suggest_record(&Published::None, &[ip("192.0.2.10"), ip("192.0.2.100")]),
            "v=spf1 ip4:192.0.2.10 ip4:192.0.2.100 ~all"
        );
        // A record that does not parse is replaced.
        assert_eq!(
            suggest_record(
                &Published::One("v=spf1 ip4:300.1.1.1 ~all".into()),
                &[ip("192.0.2.10")]
            ),
            "v=spf1 ip4:192.0.2.10 ~all"
        );
    }
}
