//! Enrichment of a matching event: ECS `tags`, `rule.*` and `threat.*`, added to the input's own
//! bytes without repeating a key and without changing or dropping any value.
//!
//! # Policy when the fields exist already
//!
//! - `tags` absent or `null`: becomes `["<tag>"]`. An array gets the tag appended unless it holds
//!   it already. Any other value `v` (a string, a number, an object...) becomes `[v,"<tag>"]`,
//!   `v`'s bytes untouched, or `[v]` when `v` is the tag itself: `tags` of an alert is always an
//!   array holding the tag once, so a router can rely on its type.
//! - `rule` and `threat` are written as top-level objects when the document has neither that key
//!   nor a dotted key under it (`rule.name`, ...). When it has, the document's own value stays
//!   as it is and kmsguard's goes under `kmsguard.rule` / `kmsguard.threat` instead. When
//!   `kmsguard` is taken too, that part is skipped and counted ([`Enriched::skipped`]); the tag
//!   still marks the event.

use kmsguard_matcher::Rule;
use serde_json::json;

use crate::scan::{decode_key, elements, is_empty_container, members, object_span, Member};

/// Adds a rule's enrichment (`tags`, `rule.*`, `threat.*`) to matching documents, with the
/// policy above; its JSON is serialized once, from the rule. Used by [`crate::Transform`], and
/// by callers that decide documents one at a time (the Fluent Bit filter).
#[derive(Clone, Debug)]
pub struct Enricher {
    /// The tags to add, each with its JSON string literal.
    tags: Vec<(String, String)>,
    rule_json: String,
    threat_json: String,
}

/// What enriching one document did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enriched {
    /// `rule` or `threat` were written under `kmsguard` because the document held its own.
    pub displaced: bool,
    /// A part of the enrichment was skipped because `kmsguard` was taken as well.
    pub skipped: bool,
}

impl Enricher {
    /// The enrichment for `rule`, appending `tag` to `tags`.
    pub fn new(rule: &Rule, tag: &str) -> Enricher {
        let rule_json = json!({
            "id": rule.id,
            "name": rule.name,
            "version": rule.version,
            "ruleset": rule.ruleset,
            "category": rule.category,
            "author": [rule.author],
            "license": rule.license,
            "reference": rule.references,
        });
        let t = &rule.threat;
        let threat_json = json!({
            "framework": t.framework,
            "tactic": { "id": t.tactic.id, "name": t.tactic.name, "reference": t.tactic.reference },
            "technique": {
                "id": t.technique.id, "name": t.technique.name, "reference": t.technique.reference,
            },
        });
        Enricher::from_json(&[tag], rule_json.to_string(), threat_json.to_string())
    }

    /// An enrichment from its parts: the tags appended to `tags` (each once), and the JSON
    /// values written as `rule` and `threat`. Rule packs build theirs this way.
    pub fn from_json(tags: &[&str], rule_json: String, threat_json: String) -> Enricher {
        let tags =
            tags.iter().map(|t| (t.to_string(), serde_json::Value::from(*t).to_string())).collect();
        Enricher { tags, rule_json, threat_json }
    }

    /// Appends to `out` the document `line` (valid JSON, an object) with the enrichment added.
    /// Bytes before and after the object (whitespace, a `\r`) are kept.
    pub fn enrich(&self, line: &[u8], out: &mut Vec<u8>) -> Enriched {
        let obj = object_span(line);
        let members = members(line, obj.start);
        let named: Vec<(Option<String>, &Member)> =
            members.iter().map(|m| (decode_key(line, &m.key), m)).collect();
        let has = |name: &str| {
            named.iter().any(|(k, _)| {
                k.as_deref().is_some_and(|k| {
                    k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('.'))
                })
            })
        };
        let tags =
            named.iter().find(|(k, _)| k.as_deref() == Some("tags")).map(|(_, m)| m.value.clone());
        // Only dotted keys (`tags.x`) hold `tags`: an object, which a `tags` member beside them
        // would make a second value of the same field. The tag goes under `kmsguard` when it
        // can; when `kmsguard` is taken too, beside them all the same: an alert is never left
        // without its tag.
        let tags_taken = tags.is_none() && has("tags") && !has("kmsguard");

        let mut result = Enriched::default();
        let mut added: Vec<String> = Vec::new();
        let mut under_kmsguard: Vec<String> = Vec::new();
        if tags_taken {
            result.displaced = true;
            under_kmsguard.push(format!("\"tags\":[{}]", self.tags_json(|_| true)));
        }
        for (name, value) in [("rule", &self.rule_json), ("threat", &self.threat_json)] {
            if !has(name) {
                added.push(format!("\"{name}\":{value}"));
            } else {
                result.displaced = true;
                under_kmsguard.push(format!("\"{name}\":{value}"));
            }
        }
        if !under_kmsguard.is_empty() {
            if has("kmsguard") {
                result.skipped = true;
            } else {
                added.push(format!("\"kmsguard\":{{{}}}", under_kmsguard.join(",")));
            }
        }

        // Write the document, rewriting the tags value in place when it exists.
        // New members go right after the last one, before any whitespace that precedes the
        // closing brace (a pretty-printed document keeps its layout).
        let at = members.last().map_or(obj.end - 1, |m| m.value.end);
        match tags {
            Some(span) => {
                out.extend_from_slice(&line[..span.start]);
                self.write_tags(&line[span.clone()], out);
                out.extend_from_slice(&line[span.end..at]);
            }
            None => {
                out.extend_from_slice(&line[..at]);
                if !tags_taken {
                    added.insert(0, format!("\"tags\":[{}]", self.tags_json(|_| true)));
                }
            }
        }
        for (n, member) in added.iter().enumerate() {
            if n > 0 || !members.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(member.as_bytes());
        }
        out.extend_from_slice(&line[at..]);
        result
    }

    /// The JSON literals of the tags that `keep` accepts, comma-separated.
    fn tags_json(&self, keep: impl Fn(&str) -> bool) -> String {
        let kept: Vec<&str> =
            self.tags.iter().filter(|(t, _)| keep(t)).map(|(_, j)| j.as_str()).collect();
        kept.join(",")
    }

    /// Writes a `tags` value with the tags added (see the module's policy).
    fn write_tags(&self, value: &[u8], out: &mut Vec<u8>) {
        let as_tag = |v: &[u8]| serde_json::from_slice::<String>(v).ok();
        match value.first() {
            Some(b'[') => {
                let whole = 0..value.len();
                let held: Vec<String> = elements(value, whole.clone())
                    .into_iter()
                    .filter_map(|e| as_tag(&value[e]))
                    .collect();
                let new = self.tags_json(|t| !held.iter().any(|h| h == t));
                if new.is_empty() {
                    out.extend_from_slice(value);
                    return;
                }
                out.extend_from_slice(&value[..value.len() - 1]);
                if !is_empty_container(value, &whole) {
                    out.push(b',');
                }
                out.extend_from_slice(new.as_bytes());
                out.push(b']');
            }
            _ if value == b"null" => {
                out.push(b'[');
                out.extend_from_slice(self.tags_json(|_| true).as_bytes());
                out.push(b']');
            }
            _ => {
                out.push(b'[');
                out.extend_from_slice(value);
                let held = as_tag(value);
                let new = self.tags_json(|t| held.as_deref() != Some(t));
                if !new.is_empty() {
                    out.push(b',');
                    out.extend_from_slice(new.as_bytes());
                }
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn enrich(doc: &str) -> (Value, Enriched) {
        let e = Enricher::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion(), "t");
        let mut out = Vec::new();
        let r = e.enrich(doc.as_bytes(), &mut out);
        let text = String::from_utf8(out).unwrap();
        (serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")), r)
    }

    #[test]
    fn adds_tags_rule_and_threat() {
        let (v, r) = enrich(r#"{"a":1}"#);
        assert_eq!(v["a"], 1);
        assert_eq!(v["tags"], json!(["t"]));
        assert_eq!(v["rule"]["id"], "6951f15e-533c-4a60-8014-a3c3ab851a1b");
        assert_eq!(v["threat"]["technique"]["id"], "T1485");
        assert_eq!(r, Enriched::default());
        assert_eq!(enrich("{}").0["tags"], json!(["t"]));
    }

    #[test]
    fn tags_values_are_kept() {
        assert_eq!(enrich(r#"{"tags":["x"]}"#).0["tags"], json!(["x", "t"]));
        assert_eq!(enrich(r#"{"tags":[ ]}"#).0["tags"], json!(["t"]));
        assert_eq!(enrich(r#"{"tags":"x"}"#).0["tags"], json!(["x", "t"]));
        assert_eq!(enrich(r#"{"tags":null}"#).0["tags"], json!(["t"]));
        assert_eq!(enrich(r#"{"tags":{"k":1}}"#).0["tags"], json!([{"k": 1}, "t"]));
        assert_eq!(enrich(r#"{"tags":["t","x"]}"#).0["tags"], json!(["t", "x"]));
        assert_eq!(enrich(r#"{"tags":"t"}"#).0["tags"], json!(["t"]));
        assert_eq!(enrich(r#"{"tags":"\u0074"}"#).0["tags"], json!(["t"]));
        let two = Enricher::from_json(&["a", "b"], "{}".into(), "[]".into());
        let with = |doc: &str| {
            let mut out = Vec::new();
            two.enrich(doc.as_bytes(), &mut out);
            serde_json::from_slice::<Value>(&out).unwrap()["tags"].clone()
        };
        assert_eq!(with(r#"{"tags":["b","x"]}"#), json!(["b", "x", "a"]));
        assert_eq!(with(r#"{"tags":"a"}"#), json!(["a", "b"]));
        assert_eq!(with(r#"{"tags":null}"#), json!(["a", "b"]));
        assert_eq!(with(r#"{"x":1}"#), json!(["a", "b"]));
        assert_eq!(enrich(r#"{"t\u0061gs":["x"]}"#).0["tags"], json!(["x", "t"]));
    }

    #[test]
    fn existing_rule_is_kept_and_ours_is_displaced() {
        let (v, r) = enrich(r#"{"rule":{"id":"mine"},"threat.framework":"x"}"#);
        assert_eq!(v["rule"], json!({"id": "mine"}));
        assert_eq!(v["threat.framework"], "x");
        assert_eq!(v["kmsguard"]["rule"]["version"], "1");
        assert_eq!(v["kmsguard"]["threat"]["tactic"]["id"], "TA0040");
        assert!(r.displaced && !r.skipped);
        let (v, r) = enrich(r#"{"rule":1,"kmsguard":2}"#);
        assert_eq!((v["rule"].clone(), v["kmsguard"].clone()), (json!(1), json!(2)));
        assert_eq!(v["threat"]["framework"], "MITRE ATT&CK");
        assert!(r.skipped);
    }

    /// A `tags` held by dotted keys is an object; ours goes under `kmsguard.tags` rather than
    /// beside it as a second value of the same field.
    #[test]
    fn tags_held_by_dotted_keys_are_kept_and_ours_is_displaced() {
        let (v, r) = enrich(r#"{"tags.x":"y","a":1}"#);
        assert_eq!(v["tags.x"], "y");
        assert!(v.get("tags").is_none(), "{v}");
        assert_eq!(v["kmsguard"]["tags"], json!(["t"]));
        assert_eq!(v["rule"]["version"], "1", "rule and threat are free");
        assert!(r.displaced && !r.skipped);
        // With `kmsguard` taken too, the tag still marks the event, beside the dotted keys.
        let (v, r) = enrich(r#"{"tags.x":"y","rule":1,"kmsguard":2}"#);
        assert_eq!((v["tags"].clone(), v["kmsguard"].clone()), (json!(["t"]), json!(2)));
        assert!(r.skipped);
        let (v, r) = enrich(r#"{"tags.x":"y","kmsguard":2}"#);
        assert_eq!(v["tags"], json!(["t"]));
        assert!(!r.displaced && !r.skipped);
    }

    #[test]
    fn a_byte_order_mark_stays_before_the_object() {
        let e = Enricher::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion(), "t");
        let mut out = Vec::new();
        e.enrich(b"\xEF\xBB\xBF{\"a\":1}", &mut out);
        assert!(out.starts_with(b"\xEF\xBB\xBF{\"a\":1,\"tags\":[\"t\"]"), "{out:?}");
    }

    #[test]
    fn surrounding_bytes_are_kept() {
        let e = Enricher::new(&Rule::kms_cmk_disabled_or_scheduled_for_deletion(), "t");
        let mut out = Vec::new();
        e.enrich(b" {\"a\":1} \r", &mut out);
        assert!(out.starts_with(b" {\"a\":1,\"tags\":[\"t\"]"));
        assert!(out.ends_with(b"} \r"));
    }
}
