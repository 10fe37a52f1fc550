//! The rule as data: one definition from which the exact evaluator, the prefilter literals and the
//! enrichment are all derived.

/// One `field:(term or term ...)` clause of a KQL conjunction.
///
/// The clause holds when any value of `field` (Elasticsearch semantics: dotted keys equal nested
/// objects, arrays flattened) is a string exactly equal to one of `terms`.
#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    /// The ECS field path, such as `event.action`.
    pub field: &'static str,
    /// The keyword terms, any of which satisfies the clause. Case-sensitive, whole-value.
    pub terms: &'static [&'static str],
    /// Estimated share of CloudTrail events whose `field` holds one of `terms` (0.0 to 1.0).
    ///
    /// The prefilter searches for the terms of the rarest eligible clause; this number is what
    /// "rarest" means. It is a property of real traffic, not of the rule, which is why it is data.
    pub share: f64,
}

/// The MITRE ATT&CK mapping of a rule, written into matching events as ECS `threat.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threat {
    /// `threat.framework`, e.g. `MITRE ATT&CK`.
    pub framework: &'static str,
    /// `threat.tactic.id`, `.name`, `.reference`.
    pub tactic: Ref,
    /// `threat.technique.id`, `.name`, `.reference`.
    pub technique: Ref,
}

/// An identified, named, referenced entry of a framework (a tactic or a technique).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    /// Identifier, such as `TA0040`.
    pub id: &'static str,
    /// Human name, such as `Impact`.
    pub name: &'static str,
    /// URL of the entry.
    pub reference: &'static str,
}

/// A detection rule: metadata plus a conjunction of [`Clause`]s.
///
/// A second rule would be a second value of this type, not new code.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `rule.name`.
    pub name: &'static str,
    /// `rule.id` (the Elastic `rule_id`).
    pub id: &'static str,
    /// `rule.version`.
    pub version: &'static str,
    /// `rule.ruleset`.
    pub ruleset: &'static str,
    /// `rule.category`.
    pub category: &'static str,
    /// `rule.author`.
    pub author: &'static str,
    /// `rule.license`.
    pub license: &'static str,
    /// `rule.reference`: documentation links, joined with a space in the output.
    pub references: &'static [&'static str],
    /// Severity, such as `medium`.
    pub severity: &'static str,
    /// Risk score, 0 to 100.
    pub risk_score: u8,
    /// The threat mapping.
    pub threat: Threat,
    /// The query: every clause must hold.
    pub clauses: Vec<Clause>,
    /// The default tag appended to `tags` of a matching event.
    pub tag: &'static str,
}

/// The ECS field that records a document's dataset in the rule's first version.
pub const EVENT_DATASET: &str = "event.dataset";
/// The field later upstream versions of the rule use instead (spec section 1).
pub const DATA_STREAM_DATASET: &str = "data_stream.dataset";
/// The dataset every CloudTrail shape other than ECS carries by its shape.
pub const CLOUDTRAIL_DATASET: &str = "aws.cloudtrail";

impl Rule {
    /// *AWS KMS Customer Managed Key Disabled or Scheduled for Deletion*, version 1 (Elastic
    /// prebuilt rules 8.4.1), the rule kmsguard implements by default.
    pub fn kms_cmk_disabled_or_scheduled_for_deletion() -> Rule {
        Rule {
            name: "AWS KMS Customer Managed Key Disabled or Scheduled for Deletion",
            id: "6951f15e-533c-4a60-8014-a3c3ab851a1b",
            version: "1",
            ruleset: "elastic/detection-rules",
            category: "query",
            author: "Xavier Pich",
            license: "Elastic License v2",
            references: &[
                "https://docs.aws.amazon.com/cli/latest/reference/kms/disable-key.html",
                "https://docs.aws.amazon.com/cli/latest/reference/kms/schedule-key-deletion.html",
            ],
            severity: "medium",
            risk_score: 47,
            threat: Threat {
                framework: "MITRE ATT&CK",
                tactic: Ref {
                    id: "TA0040",
                    name: "Impact",
                    reference: "https://attack.mitre.org/tactics/TA0040/",
                },
                technique: Ref {
                    id: "T1485",
                    name: "Data Destruction",
                    reference: "https://attack.mitre.org/techniques/T1485/",
                },
            },
            clauses: vec![
                // Every CloudTrail event carries the dataset.
                Clause { field: EVENT_DATASET, terms: &[CLOUDTRAIL_DATASET], share: 1.0 },
                // KMS Decrypt/GenerateDataKey traffic is often a third of all events.
                Clause { field: "event.provider", terms: &["kms.amazonaws.com"], share: 0.3 },
                // Key-disabling calls are a handful per million events; ScheduleKeyDeletion is
                // the rarer of the two, so it is listed (and searched) second.
                Clause {
                    field: "event.action",
                    terms: &["DisableKey", "ScheduleKeyDeletion"],
                    share: 0.0005,
                },
                // Most API calls succeed.
                Clause { field: "event.outcome", terms: &["success"], share: 0.95 },
            ],
            tag: "kms-cmk-disabled-or-scheduled-for-deletion",
        }
    }

    /// The same rule with its dataset clause on `field` instead (for example
    /// [`DATA_STREAM_DATASET`], as later upstream versions of the rule have it).
    pub fn with_dataset_field(mut self, field: &'static str) -> Rule {
        for clause in &mut self.clauses {
            if is_dataset_field(clause.field) {
                clause.field = field;
            }
        }
        self
    }

    /// The clause on a dataset field, if the rule has one.
    pub fn dataset_clause(&self) -> Option<&Clause> {
        self.clauses.iter().find(|c| is_dataset_field(c.field))
    }
}

/// Whether `field` names a document's dataset in ECS.
pub fn is_dataset_field(field: &str) -> bool {
    field == EVENT_DATASET || field == DATA_STREAM_DATASET
}

/// The version of the Elastic AWS integration's CloudTrail ingest pipeline the raw mapping follows
/// (spec section 4): `packages/aws/data_stream/cloudtrail/elasticsearch/ingest_pipeline/default.yml`
/// in elastic/integrations at this commit.
pub const PIPELINE_COMMIT: &str = "0b97ab02";

/// How the pipeline carries a raw record's value into an ECS field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawValue {
    /// A `rename` processor moves the value as it is: an array stays an array, and any of its
    /// strings can equal a term.
    Renamed,
    /// A `set` processor renders the value through a Mustache template (`{{{json.eventName}}}`):
    /// a string is copied, any other value becomes text such as `{0=DisableKey}` that never
    /// equals a term.
    Rendered,
}

/// One ECS field the pipeline fills from a raw record key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawField {
    /// The ECS field, such as `event.action`.
    pub ecs: &'static str,
    /// The raw record key, such as `eventName`.
    pub key: &'static str,
    /// How the value is carried.
    pub value: RawValue,
}

/// How the Elastic AWS integration maps a raw CloudTrail record onto the ECS fields the rule reads
/// (spec section 4, pipeline [`PIPELINE_COMMIT`]).
pub const RAW_FIELD_MAP: &[RawField] = &[
    RawField { ecs: "event.provider", key: "eventSource", value: RawValue::Renamed },
    RawField { ecs: "event.action", key: "eventName", value: RawValue::Rendered },
];

/// The ECS field a raw record's outcome is computed into: `failure` when [`RAW_ERROR_KEYS`] hold
/// a value the pipeline keeps, else `success`.
pub const OUTCOME_FIELD: &str = "event.outcome";

/// Raw record keys whose presence (after the pipeline's removal of empty values) makes
/// `event.outcome` `failure`.
pub const RAW_ERROR_KEYS: &[&str] = &["errorCode", "errorMessage"];

/// Strings the pipeline's first script removes, with `null`, empty objects and empty arrays
/// (recursively: containers emptied by the removal go too), before any mapping.
pub const REMOVED_STRINGS: &[&str] = &["", "-", "none"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_field_swap_touches_only_the_dataset_clause() {
        let rule = Rule::kms_cmk_disabled_or_scheduled_for_deletion();
        let later = rule.clone().with_dataset_field(DATA_STREAM_DATASET);
        assert_eq!(later.dataset_clause().unwrap().field, DATA_STREAM_DATASET);
        assert_eq!(later.clauses[1..], rule.clauses[1..]);
    }
}
