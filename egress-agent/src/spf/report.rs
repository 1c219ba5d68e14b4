//! The verdict and its output: the problems the collected facts show, the record to publish,
//! and the report for people.

use std::{fmt::Write as _, net::Ipv4Addr};

use serde::Serialize;

use super::{
    lookups::{LookupCount, MAX_DNS_LOOKUPS},
    record::{suggest_record, validate, Published},
};
use crate::table::{self, left, Col};

/// One egress IP's results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpCheck {
    pub ip: Ipv4Addr,
    /// `check_host()` for `postmaster@<domain>` from this IP: `pass`, `softfail`, ...
    pub spf: String,
    /// The PTR names of the IP (empty: none).
    pub ptr: Vec<String>,
    /// Forward-confirmed reverse DNS: `pass`, `fail`, `permerror`, `temperror`.
    pub fcrdns: String,
    /// Why FCrDNS did not pass.
    pub fcrdns_detail: Option<String>,
}

impl IpCheck {
    const COLUMNS: [Col; 4] = [
        left("EGRESS IP", 16),
        left("SPF", 10),
        left("PTR", 32),
        left("FCrDNS", 0),
    ];

    fn cells(&self) -> Vec<String> {
        let ptr = if self.ptr.is_empty() {
            "-".to_owned()
        } else {
            self.ptr.join(",")
        };
        vec![
            self.ip.to_string(),
            self.spf.clone(),
            ptr,
            self.fcrdns.clone(),
        ]
    }
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub domain: String,
    pub published: Published,
    pub lookups: LookupCount,
    pub ips: Vec<IpCheck>,
    pub problems: Vec<String>,
    /// The SPF record to publish, when the published one does not authorise every egress IP.
    pub suggested_record: Option<String>,
    pub ok: bool,
}

impl Report {
    /// Judges the collected facts: lists the problems and the record to publish.
    pub fn new(
        domain: &str,
        published: Published,
        lookups: LookupCount,
        ips: Vec<IpCheck>,
    ) -> Report {
        let mut problems = Vec::new();
        let mut record_broken = false;
        match &published {
            Published::None => {
                problems.push(format!("{domain} publishes no SPF record"));
                record_broken = true;
            }
            Published::Many(r) => {
                problems.push(format!(
                    "{domain} publishes {} SPF records; receivers answer permerror: keep one",
                    r.len()
                ));
                record_broken = true;
            }
            Published::Error(e) => {
                problems.push(format!("looking up {domain}'s SPF record failed: {e}"));
            }
            Published::One(t) => {
                if let Err(e) = validate(t) {
                    problems.push(format!(
                        "{domain}'s SPF record does not parse ({e}); receivers answer permerror"
                    ));
                    record_broken = true;
                }
            }
        }
        if lookups.total > MAX_DNS_LOOKUPS {
            problems.push(format!(
                "the record needs {} DNS lookups, more than the limit of {MAX_DNS_LOOKUPS} \
                 (RFC 7208 4.6.4); receivers answer permerror: replace include/a/mx terms by \
                 the ip4:/ip6: ranges they stand for",
                lookups.total
            ));
        }
        for n in &lookups.notes {
            if n.contains("permerror") {
                problems.push(n.clone());
            }
        }
        let mut missing = Vec::new();
        for c in &ips {
            if c.spf != "pass" {
                problems.push(format!(
                    "{} is not authorised by the SPF record ({})",
                    c.ip, c.spf
                ));
                missing.push(c.ip);
            }
            if c.fcrdns != "pass" {
                let why = c.fcrdns_detail.as_deref().unwrap_or("");
                problems.push(if c.ptr.is_empty() {
                    format!(
                        "{} has no PTR record ({why}): publish one naming a host whose A \
                         record is {}",
                        c.ip, c.ip
                    )
                } else {
                    format!(
                        "{}'s PTR name {} does not resolve back to it ({why}): give that \
                         name an A record {}",
                        c.ip,
                        c.ptr.join(", "),
                        c.ip
                    )
                });
            }
        }
        // Without the current record (a failed lookup) there is nothing sound to suggest.
        let lookup_failed = matches!(published, Published::Error(_));
        let suggested_record = if !lookup_failed && (record_broken || !missing.is_empty()) {
            // A broken record is replaced whole: name every egress IP.
            let ips_to_add: Vec<Ipv4Addr> = if record_broken {
                ips.iter().map(|c| c.ip).collect()
            } else {
                missing
            };
            let base = if record_broken {
                &Published::None
            } else {
                &published
            };
            Some(suggest_record(base, &ips_to_add))
        } else {
            None
        };
        Report {
            domain: domain.to_owned(),
            ok: problems.is_empty(),
            published,
            lookups,
            ips,
            problems,
            suggested_record,
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "domain       {}", self.domain);
        let record = match &self.published {
            Published::None => "(none)".to_owned(),
            Published::One(t) => t.clone(),
            Published::Many(r) => r.join("  |  "),
            Published::Error(e) => format!("(lookup failed: {e})"),
        };
        let _ = writeln!(s, "SPF record   {record}");
        let _ = writeln!(
            s,
            "DNS lookups  {} of at most {MAX_DNS_LOOKUPS}{}",
            self.lookups.total,
            if self.lookups.terms.is_empty() {
                String::new()
            } else {
                format!(": {}", self.lookups.terms.join(", "))
            }
        );
        s.push('\n');
        s += &table::render(&IpCheck::COLUMNS, self.ips.iter().map(IpCheck::cells));
        if self.ok {
            let _ = writeln!(s, "\nok: every egress IP passes SPF and has FCrDNS");
        } else {
            let _ = writeln!(s, "\nproblems:");
            for p in &self.problems {
                let _ = writeln!(s, "  - {p}");
            }
        }
        if let Some(r) = &self.suggested_record {
            let _ = writeln!(s, "\npublish this SPF record (TXT at {}):", self.domain);
            let _ = writeln!(s, "  {r}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spf::lookups::count_lookups;

    #[test]
    fn eleven_lookups_exceed_the_limit() {
        let top = format!(
            "v=spf1 {} a:a1.d.example a:a2.d.example a:a3.d.example mx mx:m2.d.example \
             mx:m3.d.example ip4:192.0.2.10 ~all",
            (1..=5)
                .map(|i| format!("include:i{i}.d.example"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut list = vec![("d.example".to_owned(), top)];
        for i in 1..=5 {
            list.push((format!("i{i}.d.example"), "v=spf1 -all".to_owned()));
        }
        let r: BTreeMap<String, Published> = list
            .into_iter()
            .map(|(n, t)| (n, Published::One(t)))
            .collect();
        let c = count_lookups("d.example", &r);
        assert_eq!(c.total, 11);
        let report = Report::new("d.example", r["d.example"].clone(), c, vec![]);
        assert!(!report.ok);
        assert!(
            report.problems[0].contains("11 DNS lookups"),
            "{:?}",
            report.problems
        );
    }

    fn ipc(ip: &str, spf: &str, fcrdns: &str, ptr: &[&str]) -> IpCheck {
        IpCheck {
            ip: ip.parse().unwrap(),
            spf: spf.into(),
            ptr: ptr.iter().map(|s| s.to_string()).collect(),
            fcrdns: fcrdns.into(),
            fcrdns_detail: None,
        }
    }

    #[test]
    fn a_covering_record_with_fcrdns_is_ok() {
        let p = Published::One("v=spf1 ip4:192.0.2.10 ~all".into());
        let r = Report::new(
            "d.example",
            p,
            LookupCount::default(),
            vec![ipc("192.0.2.10", "pass", "pass", &["mail.d.example"])],
        );
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.suggested_record, None);
        assert!(r.render().contains("ok: every egress IP passes SPF"));
    }

    #[test]
    fn uncovered_ip_and_missing_ptr_are_reported_with_the_record_to_publish() {
        let p = Published::One("v=spf1 ip4:192.0.2.10 ~all".into());
        let r = Report::new(
            "d.example",
            p,
            LookupCount::default(),
            vec![
                ipc("192.0.2.10", "pass", "pass", &["mail.d.example"]),
                ipc("192.0.2.100", "softfail", "permerror", &[]),
            ],
        );
        assert!(!r.ok);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(r.problems[0].contains("192.0.2.100 is not authorised"));
        assert!(r.problems[1].contains("192.0.2.100 has no PTR record"));
        assert_eq!(
            r.suggested_record.as_deref(),
            Some("v=spf1 ip4:192.0.2.100 ip4:192.0.2.10 ~all")
        );
        assert!(r
            .render()
            .contains("publish this SPF record (TXT at d.example):"));
    }

    #[test]
    fn the_report_text_is_the_readme_layout() {
        let mut no_ptr = ipc("192.0.2.100", "softfail", "permerror", &[]);
        no_ptr.fcrdns_detail = Some("...".into());
        let r = Report::new(
            "example.org",
            Published::One("v=spf1 ip4:192.0.2.10 ~all".into()),
            LookupCount::default(),
            vec![
                ipc("192.0.2.10", "pass", "pass", &["mail.example.org"]),
                no_ptr,
            ],
        );
        let text = r.render();
        assert!(
            text.starts_with(
                "\
domain       example.org
SPF record   v=spf1 ip4:192.0.2.10 ~all
DNS lookups  0 of at most 10

EGRESS IP        SPF        PTR                              FCrDNS
192.0.2.10       pass       mail.example.org                 pass
192.0.2.100      softfail   -                                permerror

problems:
  - 192.0.2.100 is not authorised by the SPF record (softfail)
  - 192.0.2.100 has no PTR record (...): publish one naming a host whose A record is 192.0.2.100
"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_broken_record_is_replaced_whole() {
        let p = Published::One("v=spf1 ip4:192.0.2.10 ~al".into());
        let r = Report::new(
            "d.example",
            p,
            LookupCount::default(),
            vec![ipc("192.0.2.10", "permerror", "pass", &["mail.d.example"])],
        );
        assert!(!r.ok);
        assert!(r.problems[0].contains("does not parse"), "{:?}", r.problems);
        assert_eq!(
            r.suggested_record.as_deref(),
            Some("v=spf1 ip4:192.0.2.10 ~all")
        );
    }

    #[test]
    fn a_failed_lookup_suggests_nothing() {
        let r = Report::new(
            "d.example",
            Published::Error("timed out".into()),
            LookupCount::default(),
            vec![ipc("192.0.2.10", "temperror", "temperror", &[])],
        );
        assert!(!r.ok);
        assert!(
            r.problems[0].contains("failed: timed out"),
            "{:?}",
            r.problems
        );
        assert_eq!(r.suggested_record, None);
    }

    #[test]
    fn several_records_are_a_problem() {
        let r = Report::new(
            "d.example",
            Published::Many(vec!["v=spf1 -all".into(), "v=spf1 ~all".into()]),
            LookupCount::default(),
            vec![ipc("192.0.2.10", "permerror", "pass", &["m"])],
        );
        assert!(r.problems[0].contains("publishes 2 SPF records"));
        assert_eq!(
            r.suggested_record.as_deref(),
            Some("v=spf1 ip4:192.0.2.10 ~all")
        );
    }
}
