//! The DNS lookups a record costs: fetching the record tree (`include:`, `redirect=`) and
//! counting its DNS-querying terms against the limit of RFC 7208 4.6.4.

use std::collections::BTreeMap;

use mail_auth::{
    common::parse::TxtRecordParser,
    spf::{Macro, Mechanism, Spf},
    MessageAuthenticator,
};
use serde::Serialize;

use super::record::{literal, normalise, references, validate, Published};

/// RFC 7208 4.6.4: at most 10 terms that cause DNS queries.
pub const MAX_DNS_LOOKUPS: usize = 10;

/// Most names fetched while following `include:` and `redirect=` (a guard against huge trees).
const MAX_FETCHED_NAMES: usize = 64;

/// The DNS-querying terms of a record tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LookupCount {
    /// Terms that cost a DNS lookup, over the whole tree (RFC 7208 4.6.4).
    pub total: usize,
    /// Each such term and the domain whose record holds it, in evaluation order.
    pub terms: Vec<String>,
    /// What could not be followed: missing or broken included records, loops, macros.
    pub notes: Vec<String>,
}

/// Counts the DNS-querying terms of `domain`'s record and of every record it includes or
/// redirects to, as found in `records` (name -> what it publishes). This is the static count
/// that SPF checkers report: every branch, as if nothing matched early.
pub fn count_lookups(domain: &str, records: &BTreeMap<String, Published>) -> LookupCount {
    let mut count = LookupCount::default();
    let mut stack = Vec::new();
    walk(&normalise(domain), records, &mut stack, &mut count);
    count
}

fn walk(
    domain: &str,
    records: &BTreeMap<String, Published>,
    stack: &mut Vec<String>,
    count: &mut LookupCount,
) {
    if stack.iter().any(|d| d == domain) {
        count
            .notes
            .push(format!("{domain} includes itself (a loop): permerror"));
        return;
    }
    if stack.len() > MAX_DNS_LOOKUPS {
        return;
    }
    let text = match records.get(domain) {
        Some(Published::One(t)) => t,
        Some(Published::Many(_)) => {
            count
                .notes
                .push(format!("{domain} publishes several SPF records: permerror"));
            return;
        }
        Some(Published::None) => {
            if !stack.is_empty() {
                count.notes.push(format!(
                    "{domain} is included but publishes no SPF record: permerror"
                ));
            }
            return;
        }
        Some(Published::Error(e)) => {
            count.notes.push(format!("{domain}: lookup failed: {e}"));
            return;
        }
        None => {
            count
                .notes
                .push(format!("{domain}: not looked up (too many names)"));
            return;
        }
    };
    let spf = match validate(text)
        .and_then(|()| Spf::parse(text.as_bytes()).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            count.notes.push(format!(
                "{domain}: the SPF record does not parse ({e}): permerror"
            ));
            return;
        }
    };
    stack.push(domain.to_owned());
    let add = |count: &mut LookupCount, what: &str| {
        count.total += 1;
        count.terms.push(format!("{what} (in {domain})"));
    };
    for d in spf.directives.iter() {
        match &d.mechanism {
            Mechanism::Include { macro_string } => {
                let target = literal(macro_string);
                add(
                    count,
                    &format!("include:{}", target.as_deref().unwrap_or("<macro>")),
                );
                match target {
                    Some(t) => walk(&t, records, stack, count),
                    None => count.notes.push(format!(
                        "{domain}: an include with macros is counted once, not followed"
                    )),
                }
            }
            Mechanism::A { macro_string, .. } => add(count, &term("a", macro_string)),
            Mechanism::Mx { macro_string, .. } => add(count, &term("mx", macro_string)),
            Mechanism::Ptr { macro_string } => add(count, &term("ptr", macro_string)),
            Mechanism::Exists { macro_string } => add(count, &term("exists", macro_string)),
            Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
        }
    }
    if let Some(r) = &spf.redirect {
        let target = literal(r);
        add(
            count,
            &format!("redirect={}", target.as_deref().unwrap_or("<macro>")),
        );
        if let Some(t) = target {
            walk(&t, records, stack, count);
        }
    }
    stack.pop();
}

fn term(name: &str, m: &Macro) -> String {
    match m {
        Macro::None => name.to_owned(),
        m => format!("{name}:{}", literal(m).unwrap_or_else(|| "<macro>".into())),
    }
}

/// The TXT records of `name` that are SPF records.
pub(super) async fn published(auth: &MessageAuthenticator, name: &str) -> Published {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match auth.resolver().txt_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let txt: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    mail_auth::hickory_resolver::proto::rr::RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            Published::from_txt(&txt)
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Published::None,
        Err(e) => Published::Error(e.to_string()),
    }
}

/// What `domain` and every record it includes or redirects to publish (at most
/// `MAX_FETCHED_NAMES` names).
pub(super) async fn fetch_tree(
    auth: &MessageAuthenticator,
    domain: &str,
) -> BTreeMap<String, Published> {
    let mut records = BTreeMap::new();
    let mut queue = vec![domain.to_owned()];
    while let Some(name) = queue.pop() {
        if records.contains_key(&name) || records.len() >= MAX_FETCHED_NAMES {
            continue;
        }
        let p = published(auth, &name).await;
        if let Published::One(t) = &p {
            queue.extend(references(t));
        }
        records.insert(name, p);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(&str, &str)]) -> BTreeMap<String, Published> {
        list.iter()
            .map(|(n, t)| (n.to_string(), Published::One(t.to_string())))
            .collect()
    }

    #[test]
    fn an_ip4_only_record_costs_no_lookup() {
        let r = recs(&[("d.example", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::/32 ~all")]);
        let c = count_lookups("d.example", &r);
        assert_eq!(c.total, 0);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn counts_every_querying_term_across_includes() {
        let r = recs(&[
            (
                "d.example",
                "v=spf1 a mx:mail.d.example include:i.example ptr exists:%{i}.x.example redirect=r.example",
            ),
            ("i.example", "v=spf1 a include:j.example -all"),
            ("j.example", "v=spf1 ip4:198.51.100.0/24 -all"),
            ("r.example", "v=spf1 mx -all"),
        ]);
        let c = count_lookups("D.example.", &r);
        // d: a, mx, include, ptr, exists, redirect = 6; i: a, include = 2; r: mx = 1.
        assert_eq!(c.total, 9, "{c:#?}");
        assert_eq!(c.terms[0], "a (in d.example)");
        assert!(c
            .terms
            .contains(&"include:j.example (in i.example)".to_owned()));
        assert!(c
            .terms
            .contains(&"redirect=r.example (in d.example)".to_owned()));
    }

    #[test]
    fn loops_and_missing_includes_are_permerrors() {
        let mut r = recs(&[
            (
                "a.example",
                "v=spf1 include:b.example include:c.example -all",
            ),
            ("b.example", "v=spf1 include:a.example -all"),
        ]);
        r.insert("c.example".into(), Published::None);
        let c = count_lookups("a.example", &r);
        assert_eq!(c.total, 3);
        assert!(c.notes.iter().any(|n| n.contains("loop")), "{c:#?}");
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("c.example is included but publishes no SPF record")),
            "{c:#?}"
        );
    }
}
