//! Unknown fields: one typed pass that notes every key no type asked for (`serde_ignored`), and
//! the "did you mean" hint, from the field names the type at that place declares.
//!
//! The custom resource's types accept unknown fields (the API server prunes them), so serde
//! alone would let a misspelt optional field in the file silently do nothing. The field names
//! come from the types themselves ([`known_fields`]), so there is no list to keep in step.

use serde::{
    de::{self, value::Error as ProbeError, DeserializeOwned, IntoDeserializer, Visitor},
    forward_to_deserialize_any,
};

/// One step of the path to a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Deserializes `T` from `de`, returning the paths of the keys that `T` ignored.
pub fn deserialize<'de, T, D>(de: D) -> Result<(T, Vec<Vec<Segment>>), D::Error>
where
    T: de::Deserialize<'de>,
    D: de::Deserializer<'de>,
{
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(de, |path| unknown.push(segments(&path)))?;
    Ok((value, unknown))
}

fn segments(path: &serde_ignored::Path) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        Path::Map { key, .. } => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

/// The field names of the struct that `T` holds at `path` (empty when there is none): `T`
/// is deserialized from a probe that follows `path` and notes the fields the struct there
/// declares to serde.
pub fn known_fields<T: DeserializeOwned>(path: &[Segment]) -> &'static [&'static str] {
    let mut found = None;
    let _ = T::deserialize(Probe {
        path,
        found: &mut found,
    });
    found.unwrap_or(&[])
}

/// The known field closest to `key`, when one is close enough to be a likely misspelling.
pub fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|f| (strsim::jaro_winkler(&key, &f.to_ascii_lowercase()), *f))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, f)| f)
}

/// A deserializer with no data: it offers a map with the path's next key (or a sequence with
/// one element), and fails at the end of the path after noting the fields of the struct there.
struct Probe<'a> {
    path: &'a [Segment],
    found: &'a mut Option<&'static [&'static str]>,
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        match self.path.split_first() {
            Some((Segment::Key(k), rest)) => visitor.visit_map(OneKey {
                key: Some(k.as_str()),
                value: Some(Probe {
                    path: rest,
                    found: self.found,
                }),
            }),
            Some((Segment::Index(_), rest)) => visitor.visit_seq(OneElement(Some(Probe {
                path: rest,
                found: self.found,
            }))),
            None => Err(de::Error::custom("end of the path")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        if self.path.is_empty() {
            *self.found = Some(fields);
            return Err(de::Error::custom("found the struct"));
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

struct OneKey<'a> {
    key: Option<&'a str>,
    value: Option<Probe<'a>>,
}

impl<'de> de::MapAccess<'de> for OneKey<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        self.key
            .take()
            .map(|k| seed.deserialize(k.into_deserializer()))
            .transpose()
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        match self.value.take() {
            Some(p) => seed.deserialize(p),
            None => Err(de::Error::custom("no value")),
        }
    }
}

struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        self.0.take().map(|p| seed.deserialize(p)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn key(k: &str) -> Segment {
        Segment::Key(k.into())
    }

    #[test]
    fn the_probe_finds_the_fields_of_nested_and_foreign_types() {
        let f = known_fields::<AgentConfig>(&[]);
        assert!(f.contains(&"tunnel") && f.contains(&"policies"), "{f:?}");
        let f = known_fields::<AgentConfig>(&[key("tunnel")]);
        assert_eq!(
            f,
            ["device", "port", "underlayMtu", "interface", "trustMark"]
        );
        let spec = [key("policies"), Segment::Index(3), key("spec")];
        assert!(known_fields::<AgentConfig>(&spec).contains(&"excludedCIDRs"));
        // k8s-openapi's LabelSelector, behind an Option.
        let sel = [&spec[..], &[key("gateway"), key("nodeSelector")]].concat();
        assert_eq!(
            known_fields::<AgentConfig>(&sel),
            ["matchExpressions", "matchLabels"]
        );
        // Labels are a map: no field names.
        assert!(
            known_fields::<AgentConfig>(&[key("nodes"), Segment::Index(0), key("labels")])
                .is_empty()
        );
    }

    #[test]
    fn the_hint_is_the_closest_field_when_close_enough() {
        let known = ["selectors", "destinationCIDRs", "excludedCIDRs", "gateway"];
        assert_eq!(closest("excludedCidrs", &known), Some("excludedCIDRs"));
        assert_eq!(closest("gatway", &known), Some("gateway"));
        assert_eq!(closest("selector", &known), Some("selectors"));
        assert_eq!(
            closest("policy", &["nodes", "pods", "policies"]),
            Some("policies")
        );
        assert_eq!(closest("nodeName", &known), None);
        assert_eq!(
            closest("egressIp", &["nodeName", "egressIP", "interface"]),
            Some("egressIP")
        );
    }
}
