//! Elastic detection-rules TOML files loaded into a rule pack (`../spec/RULES.md` section 1).
//!
//! A rule is run when `type = "query"` and `language = "kuery"`, and its query stays within the
//! KQL subset kmsguard decides exactly. Every other rule is *refused* by name with its reason
//! (`eql rules are not supported`, `range query (>=) at offset 42`, ...), and a refusal never
//! stops the others.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kmsguard_matcher::kql::{self, Query};
use kmsguard_matcher::ruleset::RuleSet;
use serde::{Deserialize, Serialize};

/// A rule ready to run: what the alert says about it, and its parsed query.
#[derive(Clone, Debug, PartialEq)]
pub struct PackRule {
    /// `rule_id`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// The tag added to `tags` of matching events: the file name without its tactic prefix,
    /// dashes for underscores (`impact_kms_cmk_disabled.toml` gives `kms-cmk-disabled`).
    pub tag: String,
    /// `severity`.
    pub severity: String,
    /// `risk_score`.
    pub risk_score: u64,
    /// `author`.
    pub author: Vec<String>,
    /// `license`.
    pub license: String,
    /// `references`.
    pub references: Vec<String>,
    /// The whole `[[rule.threat]]` list, as JSON-ready values.
    pub threat: Vec<Threat>,
    /// `max_signals` (Elastic's default: 100), the rule's alert budget per window.
    pub max_signals: u64,
    /// The query's text.
    pub query_text: String,
    /// The parsed query.
    pub query: Query,
    /// Where it was read from.
    pub path: PathBuf,
}

/// One entry of a rule's threat mapping.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Threat {
    /// `framework`, e.g. `MITRE ATT&CK`.
    pub framework: String,
    /// `tactic`.
    pub tactic: Entry,
    /// `technique` (with their `subtechnique`s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub technique: Vec<Technique>,
}

/// A tactic, technique or subtechnique.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Entry {
    /// `id`, such as `TA0040`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// `reference`.
    pub reference: String,
}

/// A technique and its subtechniques.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Technique {
    /// `id`, `name`, `reference`.
    #[serde(flatten)]
    pub entry: Entry,
    /// `subtechnique`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtechnique: Vec<Entry>,
}

/// A rule file that is not run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The file.
    pub path: PathBuf,
    /// The rule's name, when the file got that far.
    pub name: Option<String>,
    /// Why, in a few words.
    pub reason: String,
    /// Refused only for its type or language (`eql`, `threshold`, ...): a well-formed file
    /// kmsguard does not run. Otherwise the file is broken (unreadable, not a rule file) or is a
    /// KQL query rule whose query kmsguard cannot run exactly.
    pub unsupported: bool,
}

/// What loading gave: the rules to run and the files refused, each in path order.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Rules to run.
    pub rules: Vec<PackRule>,
    /// Files refused.
    pub refused: Vec<Refused>,
}

#[derive(Deserialize)]
struct File {
    rule: RuleToml,
}

#[derive(Deserialize)]
struct RuleToml {
    rule_id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    language: Option<String>,
    query: Option<String>,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    risk_score: u64,
    #[serde(default)]
    author: Vec<String>,
    #[serde(default)]
    license: String,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    threat: Vec<Threat>,
    max_signals: Option<u64>,
}

/// The rule files `path` names: itself, or a directory's `*.toml` files in path order.
fn rule_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    // One directory's files: their names order them as their paths would, for less.
    files.sort_unstable_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// What [`load`] would read from `paths`: each file's name and [`Stamp`]. When it changes, a
/// rule was added, removed or edited (`--watch-rules` polls it).
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<Stamp>)> {
    paths
        .iter()
        .flat_map(|path| rule_files(path).unwrap_or_else(|_| vec![path.clone()]))
        .map(|file| {
            let stamp = std::fs::metadata(&file).ok().map(|m| Stamp::of(&m));
            (file, stamp)
        })
        .collect()
}

/// What tells one version of a file from another without reading it: its size and
/// modification time, and on Unix its inode and change time, which no copy that keeps times
/// (`cp -p`, `rsync -t`, `tar x`) and no rename can keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode, change time (seconds, nanoseconds).
    unix: Option<(u64, i64, i64)>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let unix = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.ino(), meta.ctime(), meta.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let unix = None;
        Stamp { len: meta.len(), modified: meta.modified().ok(), unix }
    }
}

/// Loads rule files, and directories of them (their `*.toml` files, in path order).
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let files = match rule_files(path) {
            Ok(files) => files,
            Err(e) => {
                loaded.refused.push(Refused {
                    path: path.clone(),
                    name: None,
                    reason: e.to_string(),
                    unsupported: false,
                });
                continue;
            }
        };
        // Parsing 194 files of TOML is most of the time it takes to load Elastic's AWS rules:
        // spread it over the cores, keeping path order. A share this thread could take alone
        // costs no thread. (Parsing the last of several shares here instead measured slower:
        // 24.0 -> 28.2 ms for Elastic's files.)
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let per = files.len().div_ceil(threads).max(16);
        let load_all = |chunk: &[PathBuf]| -> Vec<Result<PackRule, Refused>> {
            chunk.iter().map(|f| load_file(f)).collect()
        };
        let results: Vec<Vec<Result<PackRule, Refused>>> = if files.len() <= per {
            vec![load_all(&files)]
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> =
                    files.chunks(per).map(|chunk| scope.spawn(move || load_all(chunk))).collect();
                workers.into_iter().map(|w| w.join().expect("a loader panicked")).collect()
            })
        };
        for result in results.into_iter().flatten() {
            match result {
                Ok(rule) => loaded.rules.push(rule),
                Err(refused) => loaded.refused.push(refused),
            }
        }
    }
    loaded
}

/// Loads one rule file.
pub fn load_file(path: &Path) -> Result<PackRule, Refused> {
    let refuse = |name: Option<&str>, reason: String| Refused {
        path: path.to_path_buf(),
        name: name.map(str::to_string),
        reason,
        unsupported: false,
    };
    let unsupported =
        |name: Option<&str>, reason: String| Refused { unsupported: true, ..refuse(name, reason) };
    let text = std::fs::read_to_string(path).map_err(|e| refuse(None, e.to_string()))?;
    let file: File = toml::from_str(&text)
        .map_err(|e| refuse(None, format!("not a rule file: {}", e.message())))?;
    let r = file.rule;
    let name = Some(r.name.as_str());
    match (r.kind.as_str(), r.language.as_deref()) {
        ("query", Some("kuery")) => {}
        ("query", Some(other)) => {
            return Err(unsupported(name, format!("{other} queries are not supported")))
        }
        (kind, _) => return Err(unsupported(name, format!("{kind} rules are not supported"))),
    }
    let query_text = r.query.unwrap_or_default();
    let query = kql::parse(&query_text).map_err(|e| refuse(name, e.to_string()))?;
    // A field the rule may not read is refused here too, not at run time.
    RuleSet::new(std::slice::from_ref(&query), None).map_err(|(_, e)| refuse(name, e))?;
    Ok(PackRule {
        tag: tag_of(path),
        id: r.rule_id,
        name: r.name,
        severity: r.severity,
        risk_score: r.risk_score,
        author: r.author,
        license: r.license,
        references: r.references,
        threat: r.threat,
        max_signals: r.max_signals.unwrap_or(100),
        query_text,
        query,
        path: path.to_path_buf(),
    })
}

/// The MITRE ATT&CK tactics detection-rules names its files after.
const TACTICS: [&str; 14] = [
    "collection",
    "command_and_control",
    "credential_access",
    "defense_evasion",
    "discovery",
    "execution",
    "exfiltration",
    "impact",
    "initial_access",
    "lateral_movement",
    "persistence",
    "privilege_escalation",
    "reconnaissance",
    "resource_development",
];

/// A rule's tag: its file name without the tactic prefix, dashes for underscores.
pub fn tag_of(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = TACTICS
        .iter()
        .find_map(|t| stem.strip_prefix(t).and_then(|rest| rest.strip_prefix('_')))
        .unwrap_or(&stem);
    stem.replace('_', "-")
}

/// Compiles loaded rules into one [`RuleSet`] (fields shared, one program per rule).
pub fn compile(rules: &[PackRule], assume_dataset: Option<String>) -> RuleSet {
    let queries: Vec<Query> = rules.iter().map(|r| r.query.clone()).collect();
    RuleSet::new(&queries, assume_dataset).expect("each rule compiled alone when it was loaded")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_replaced_with_the_same_size_and_time_is_a_change() {
        let dir = std::env::temp_dir().join(format!("kmsguard-stamp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (rule, next) = (dir.join("a.toml"), dir.join("a.next"));
        std::fs::write(&rule, "query = 'event.action: DeleteTrail'").unwrap();
        let paths = [dir.clone()];
        let before = fingerprint(&paths);
        assert_eq!(before.len(), 1, "a directory's .toml files, not the others");
        assert_eq!(fingerprint(&paths), before, "nothing changed");
        // Another version, as `cp -p` or `rsync -t` leaves it: same size, same modification
        // time, renamed into place.
        std::fs::write(&next, "query = 'event.action: StopLogging'").unwrap();
        let modified = std::fs::metadata(&rule).unwrap().modified().unwrap();
        std::fs::File::options().write(true).open(&next).unwrap().set_modified(modified).unwrap();
        std::fs::rename(&next, &rule).unwrap();
        let after = fingerprint(&paths);
        assert_eq!(after.len(), 1);
        assert_ne!(after, before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_query_rules_and_refuses_the_rest_by_reason() {
        let dir = std::env::temp_dir().join(format!("kmsguard-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rule = |kind: &str, language: &str, query: &str| {
            format!(
                "[metadata]\ncreation_date = \"2020/01/01\"\n\n[rule]\nrule_id = \"id\"\nname = \"N\"\ntype = \"{kind}\"\nlanguage = \"{language}\"\nseverity = \"low\"\nrisk_score = 21\nauthor = [\"Elastic\"]\nlicense = \"Elastic License v2\"\nquery = '''\n{query}\n'''\n\n[[rule.threat]]\nframework = \"MITRE ATT&CK\"\n[rule.threat.tactic]\nid = \"TA0040\"\nname = \"Impact\"\nreference = \"https://attack.mitre.org/tactics/TA0040/\"\n[[rule.threat.technique]]\nid = \"T1485\"\nname = \"Data Destruction\"\nreference = \"https://attack.mitre.org/techniques/T1485/\"\n"
            )
        };
        write(&dir, "impact_a_good_rule.toml", &rule("query", "kuery", "event.action: X"));
        write(&dir, "b_eql.toml", &rule("eql", "eql", "any where true"));
        write(&dir, "c_range.toml", &rule("query", "kuery", "a: 1 and b >= 2"));
        write(&dir, "d_text.toml", &rule("query", "kuery", "message: x"));
        write(&dir, "e_broken.toml", "[rule\n");
        write(&dir, "notes.txt", "not a rule");
        let loaded = load(std::slice::from_ref(&dir));
        assert_eq!(loaded.rules.len(), 1);
        let r = &loaded.rules[0];
        assert_eq!((r.tag.as_str(), r.risk_score, r.max_signals), ("a-good-rule", 21, 100));
        assert_eq!(r.threat[0].technique[0].entry.id, "T1485");
        let reasons: Vec<&str> = loaded.refused.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons[0], "eql rules are not supported");
        assert_eq!(reasons[1], "range query (>=) at offset 11");
        assert_eq!(reasons[2], "field message is analyzed text or not indexed");
        assert!(reasons[3].starts_with("not a rule file"), "{}", reasons[3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tags_drop_the_tactic() {
        let tag = |p: &str| tag_of(Path::new(p));
        assert_eq!(
            tag("rules/impact_kms_cmk_disabled_or_scheduled_for_deletion.toml"),
            "kms-cmk-disabled-or-scheduled-for-deletion"
        );
        assert_eq!(
            tag("defense_evasion_cloudtrail_logging_deleted.toml"),
            "cloudtrail-logging-deleted"
        );
        assert_eq!(tag("other_rule.toml"), "other-rule");
    }
}
