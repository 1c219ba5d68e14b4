//! Kubernetes label selectors (`matchLabels`, `matchExpressions` with `In`, `NotIn`, `Exists`,
//! `DoesNotExist`), validated once and then matched against label sets.
//!
//! The semantics are the API server's: requirements are ANDed; an empty selector (`{}`) matches
//! everything; `In`/`NotIn` need at least one value; `Exists`/`DoesNotExist` take none; `NotIn`
//! and `DoesNotExist` match objects that lack the key. An invalid selector is an error, never
//! a silent "matches nothing".

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

/// Why a selector was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions key {key:?}: unknown operator {operator:?} (use In, NotIn, Exists or DoesNotExist)")]
    UnknownOperator { key: String, operator: String },
    #[error("matchExpressions key {key:?}: operator {operator} needs at least one value")]
    ValuesRequired { key: String, operator: String },
    #[error("matchExpressions key {key:?}: operator {operator} takes no values")]
    ValuesForbidden { key: String, operator: String },
    #[error("empty label key in {0}")]
    EmptyKey(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A validated label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Validates `sel`.
    pub fn new(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            if k.is_empty() {
                return Err(SelectorError::EmptyKey("matchLabels"));
            }
            requirements.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for e in sel.match_expressions.iter().flatten() {
            if e.key.is_empty() {
                return Err(SelectorError::EmptyKey("matchExpressions"));
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let key = e.key.clone();
            let need = |has: bool| -> Result<(), SelectorError> {
                match (has, values.is_empty()) {
                    (true, true) => Err(SelectorError::ValuesRequired {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                    }),
                    (false, false) => Err(SelectorError::ValuesForbidden {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                    }),
                    _ => Ok(()),
                }
            };
            let r = match e.operator.as_str() {
                "In" => {
                    need(true)?;
                    Requirement::In(key, values)
                }
                "NotIn" => {
                    need(true)?;
                    Requirement::NotIn(key, values)
                }
                "Exists" => {
                    need(false)?;
                    Requirement::Exists(key)
                }
                "DoesNotExist" => {
                    need(false)?;
                    Requirement::DoesNotExist(key)
                }
                other => {
                    return Err(SelectorError::UnknownOperator {
                        key,
                        operator: other.to_owned(),
                    })
                }
            };
            requirements.push(r);
        }
        Ok(Selector { requirements })
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
            }]),
            match_labels: None,
        }
    }

    fn sel(s: &LabelSelector) -> Selector {
        Selector::new(s).expect("valid selector")
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel(&LabelSelector::default());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let s = sel(&LabelSelector {
            match_labels: Some(labels(&[("app", "mail"), ("tier", "smtp")])),
            match_expressions: None,
        });
        assert!(s.matches(&labels(&[("app", "mail"), ("tier", "smtp"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "mail")])));
        assert!(!s.matches(&labels(&[("app", "mail"), ("tier", "imap")])));
    }

    #[test]
    fn in_matches_any_listed_value_and_needs_the_key() {
        let s = sel(&expr("app", "In", Some(&["a", "b"])));
        assert!(s.matches(&labels(&[("app", "a")])));
        assert!(s.matches(&labels(&[("app", "b")])));
        assert!(!s.matches(&labels(&[("app", "c")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_other_values_and_missing_keys() {
        let s = sel(&expr("app", "NotIn", Some(&["a"])));
        assert!(!s.matches(&labels(&[("app", "a")])));
        assert!(s.matches(&labels(&[("app", "b")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn exists_and_does_not_exist_look_at_the_key_only() {
        let e = sel(&expr("gw", "Exists", None));
        assert!(e.matches(&labels(&[("gw", "")])));
        assert!(!e.matches(&labels(&[("other", "x")])));
        let d = sel(&expr("gw", "DoesNotExist", Some(&[])));
        assert!(!d.matches(&labels(&[("gw", "true")])));
        assert!(d.matches(&labels(&[])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut s = expr("tier", "NotIn", Some(&["test"]));
        s.match_labels = Some(labels(&[("app", "mail")]));
        let s = sel(&s);
        assert!(s.matches(&labels(&[("app", "mail")])));
        assert!(!s.matches(&labels(&[("app", "mail"), ("tier", "test")])));
        assert!(!s.matches(&labels(&[("tier", "prod")])));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        assert!(matches!(
            Selector::new(&expr("a", "Equals", Some(&["x"]))),
            Err(SelectorError::UnknownOperator { .. })
        ));
        assert!(matches!(
            Selector::new(&expr("a", "In", None)),
            Err(SelectorError::ValuesRequired { .. })
        ));
        assert!(matches!(
            Selector::new(&expr("a", "NotIn", Some(&[]))),
            Err(SelectorError::ValuesRequired { .. })
        ));
        assert!(matches!(
            Selector::new(&expr("a", "Exists", Some(&["x"]))),
            Err(SelectorError::ValuesForbidden { .. })
        ));
        assert!(matches!(
            Selector::new(&expr("", "Exists", None)),
            Err(SelectorError::EmptyKey(_))
        ));
        let e = Selector::new(&expr("app", "Equals", Some(&["x"]))).unwrap_err();
        assert!(e.to_string().contains("use In, NotIn"), "{e}");
    }
}
