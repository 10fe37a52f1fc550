//! A deterministic generator of realistic CloudTrail NDJSON, for kmsguard's shipped sample, its
//! tests and its benchmarks.
//!
//! Events look like the Elastic AWS integration's output (ECS, about 3 KB, `event.original`
//! holding the escaped raw record), or like the earlier shapes a shipping pipeline carries (raw
//! records, Elastic Agent envelopes). A [`Profile`] sets the KMS share and the match share; the
//! same seed always gives the same bytes, and the generator counts the matches it wrote so every
//! benchmark can check its answer.
#![deny(missing_docs)]

use std::fmt::Write as _;

/// The shape events are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ECS documents as the Elastic AWS integration indexes them.
    Ecs,
    /// Raw CloudTrail records, one per line.
    Raw,
    /// Elastic Agent envelopes: the raw record as a JSON string in `message`.
    Envelope,
}

/// Which API calls the traffic is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// KMS calls (the seed rule's profiles) and six other services.
    Kms,
    /// The breadth of an account's CloudTrail: twenty services, mostly reads, including the
    /// routine calls of every service Elastic's AWS rules watch (CloudTrail, GuardDuty, IAM,
    /// RDS, Config, WAF, ...); [`Profile::fire_share`] of events are calls that fire one of
    /// those rules.
    Broad,
    /// Only KMS, rich in the seed rule's near misses by name: `EnableKey`, `DisableKeyRotation`,
    /// `EnableKeyRotation` (every line holds `leKey`).
    KmsRotation,
}

/// What share of events are KMS calls, near misses and matches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    /// Name on the command line.
    pub name: &'static str,
    /// Share of events from `kms.amazonaws.com`.
    pub kms_share: f64,
    /// Share of KMS events that are `DisableKey`/`ScheduleKeyDeletion` calls that failed.
    pub near_miss_share: f64,
    /// Share of all events that match the rule.
    pub match_share: f64,
    /// The shape written.
    pub format: Format,
    /// The calls the traffic is made of.
    pub traffic: Traffic,
    /// [`Traffic::Broad`]: share of events that are calls Elastic's AWS rules fire on.
    pub fire_share: f64,
}

impl Profile {
    /// 30% KMS traffic (mostly Decrypt/GenerateDataKey), 1% of it failed key-disabling calls,
    /// about 2 matches per 10,000 events.
    pub const MIXED: Profile = Profile {
        name: "mixed",
        kms_share: 0.30,
        near_miss_share: 0.01,
        match_share: 0.0002,
        format: Format::Ecs,
        traffic: Traffic::Kms,
        fire_share: 0.0,
    };
    /// No KMS events at all: pure prefilter speed.
    pub const NO_KMS: Profile = Profile {
        name: "no-kms",
        kms_share: 0.0,
        near_miss_share: 0.0,
        match_share: 0.0,
        format: Format::Ecs,
        traffic: Traffic::Kms,
        fire_share: 0.0,
    };
    /// Every event from KMS, 1% matches.
    pub const KMS_HEAVY: Profile = Profile {
        name: "kms-heavy",
        kms_share: 1.0,
        near_miss_share: 0.01,
        match_share: 0.01,
        format: Format::Ecs,
        traffic: Traffic::Kms,
        fire_share: 0.0,
    };
    /// Every event a DisableKey/ScheduleKeyDeletion, half of them failed: the exact path's worst case.
    pub const ALL_CANDIDATES: Profile = Profile {
        name: "all-candidates",
        kms_share: 1.0,
        near_miss_share: 1.0,
        match_share: 0.5,
        format: Format::Ecs,
        traffic: Traffic::Kms,
        fire_share: 0.0,
    };
    /// The mixed profile as raw CloudTrail records.
    pub const RAW: Profile = Profile { name: "raw", format: Format::Raw, ..Profile::MIXED };
    /// The mixed profile as Elastic Agent envelopes.
    pub const ENVELOPE: Profile =
        Profile { name: "envelope", format: Format::Envelope, ..Profile::MIXED };
    /// The shipped sample: a few hundred mixed events with a handful of matches and near misses.
    pub const SAMPLE: Profile = Profile {
        name: "sample",
        kms_share: 0.30,
        near_miss_share: 0.08,
        match_share: 0.015,
        format: Format::Ecs,
        traffic: Traffic::Kms,
        fire_share: 0.0,
    };

    /// A whole account's traffic, 2 events in 10,000 firing some rule of Elastic's pack.
    pub const BROAD: Profile = Profile {
        name: "broad",
        kms_share: 0.10,
        near_miss_share: 0.0,
        match_share: 0.0,
        format: Format::Ecs,
        traffic: Traffic::Broad,
        fire_share: 0.0002,
    };
    /// A whole account's traffic where 1% of events fire some rule of Elastic's pack.
    pub const BROAD_FIRING: Profile =
        Profile { name: "broad-1pct", fire_share: 0.01, ..Profile::BROAD };
    /// [`Profile::BROAD_FIRING`] as raw CloudTrail records.
    pub const BROAD_RAW: Profile =
        Profile { name: "broad-raw", format: Format::Raw, ..Profile::BROAD_FIRING };
    /// Only KMS calls, every one holding `leKey` (`EnableKey`, `DisableKeyRotation`, ...), 1% of
    /// them matches: the seed rule's literal at its least selective.
    pub const KMS_ROTATION: Profile = Profile {
        name: "kms-rotation",
        kms_share: 1.0,
        near_miss_share: 0.01,
        match_share: 0.01,
        format: Format::Ecs,
        traffic: Traffic::KmsRotation,
        fire_share: 0.0,
    };

    /// Every named profile.
    pub const ALL: [Profile; 11] = [
        Profile::MIXED,
        Profile::NO_KMS,
        Profile::KMS_HEAVY,
        Profile::ALL_CANDIDATES,
        Profile::RAW,
        Profile::ENVELOPE,
        Profile::SAMPLE,
        Profile::BROAD,
        Profile::BROAD_FIRING,
        Profile::BROAD_RAW,
        Profile::KMS_ROTATION,
    ];

    /// The profile called `name`.
    pub fn named(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name == name)
    }
}

/// SplitMix64: small, fast, and good enough to vary synthetic events.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn hex(&mut self, n: usize, out: &mut String) {
        for _ in 0..n {
            out.push(char::from(b"0123456789abcdef"[self.below(16)]));
        }
    }
}

/// (event source, actions, read only) of the non-KMS services.
const SERVICES: &[(&str, &[&str], bool)] = &[
    ("sts.amazonaws.com", &["AssumeRole", "GetCallerIdentity", "AssumeRoleWithWebIdentity"], true),
    (
        "s3.amazonaws.com",
        &["GetObject", "PutObject", "ListBucket", "HeadObject", "GetBucketAcl"],
        true,
    ),
    (
        "ec2.amazonaws.com",
        &["DescribeInstances", "RunInstances", "DescribeSecurityGroups", "CreateTags"],
        true,
    ),
    (
        "iam.amazonaws.com",
        &["GetRole", "ListPolicies", "CreateAccessKey", "AttachRolePolicy"],
        false,
    ),
    ("logs.amazonaws.com", &["CreateLogStream", "PutLogEvents", "DescribeLogGroups"], false),
    ("lambda.amazonaws.com", &["Invoke", "GetFunction", "UpdateFunctionCode20150331v2"], false),
];
const KMS_ACTIONS: &[&str] =
    &["Decrypt", "Decrypt", "GenerateDataKey", "GenerateDataKey", "Encrypt", "DescribeKey"];
/// [`Traffic::KmsRotation`]'s calls: each holds `leKey`, none is the rule's.
const KMS_ROTATION_ACTIONS: &[&str] = &["EnableKey", "DisableKeyRotation", "EnableKeyRotation"];
/// [`Traffic::Broad`]'s routine calls, by service.
const BROAD_SERVICES: &[(&str, &[&str], bool)] = &[
    (
        "sts.amazonaws.com",
        &["AssumeRole", "GetCallerIdentity", "AssumeRoleWithWebIdentity", "GetSessionToken"],
        true,
    ),
    (
        "s3.amazonaws.com",
        &[
            "GetObject",
            "PutObject",
            "ListBucket",
            "HeadObject",
            "GetBucketAcl",
            "GetBucketPolicy",
            "ListObjects",
        ],
        true,
    ),
    (
        "ec2.amazonaws.com",
        &[
            "DescribeInstances",
            "RunInstances",
            "DescribeSecurityGroups",
            "CreateTags",
            "DescribeVolumes",
            "DescribeSnapshots",
            "DescribeFlowLogs",
            "DescribeNetworkAcls",
        ],
        true,
    ),
    (
        "iam.amazonaws.com",
        &[
            "GetRole",
            "ListPolicies",
            "GetUser",
            "ListRoles",
            "ListAttachedRolePolicies",
            "GetPolicyVersion",
        ],
        true,
    ),
    (
        "logs.amazonaws.com",
        &["CreateLogStream", "PutLogEvents", "DescribeLogGroups", "DescribeLogStreams"],
        false,
    ),
    ("lambda.amazonaws.com", &["Invoke", "GetFunction", "ListFunctions20150331"], true),
    (
        "cloudtrail.amazonaws.com",
        &["DescribeTrails", "GetTrailStatus", "LookupEvents", "GetEventSelectors", "ListTrails"],
        true,
    ),
    (
        "guardduty.amazonaws.com",
        &["ListDetectors", "GetFindings", "ListFindings", "GetDetector"],
        true,
    ),
    (
        "rds.amazonaws.com",
        &["DescribeDBInstances", "DescribeDBClusters", "DescribeDBSnapshots"],
        true,
    ),
    ("monitoring.amazonaws.com", &["DescribeAlarms", "GetMetricData", "PutMetricData"], true),
    ("config.amazonaws.com", &["DescribeConfigRules", "DescribeConfigurationRecorderStatus"], true),
    ("route53.amazonaws.com", &["ListHostedZones", "GetHostedZone"], true),
    ("secretsmanager.amazonaws.com", &["GetSecretValue", "DescribeSecret", "ListSecrets"], true),
    ("ssm.amazonaws.com", &["GetParameter", "GetParameters", "DescribeInstanceInformation"], true),
    ("signin.amazonaws.com", &["ConsoleLogin"], false),
    ("elasticfilesystem.amazonaws.com", &["DescribeFileSystems", "DescribeMountTargets"], true),
    ("events.amazonaws.com", &["ListRules", "DescribeRule", "PutEvents"], true),
    ("wafv2.amazonaws.com", &["GetWebACL", "ListWebACLs"], true),
    ("organizations.amazonaws.com", &["DescribeOrganization", "ListAccounts"], true),
];
/// Calls Elastic's AWS query rules fire on (when they succeed), by service: what
/// [`Profile::fire_share`] of [`Traffic::Broad`] is made of.
const FIRING: &[(&str, &str)] = &[
    ("cloudtrail.amazonaws.com", "DeleteTrail"),
    ("cloudtrail.amazonaws.com", "StopLogging"),
    ("cloudtrail.amazonaws.com", "UpdateTrail"),
    ("guardduty.amazonaws.com", "DeleteDetector"),
    ("ec2.amazonaws.com", "DeleteFlowLogs"),
    ("ec2.amazonaws.com", "DeleteNetworkAcl"),
    ("rds.amazonaws.com", "DeleteDBCluster"),
    ("rds.amazonaws.com", "DeleteDBInstance"),
    ("monitoring.amazonaws.com", "DeleteAlarms"),
    ("logs.amazonaws.com", "DeleteLogGroup"),
    ("logs.amazonaws.com", "DeleteLogStream"),
    ("kms.amazonaws.com", "DisableKey"),
    ("kms.amazonaws.com", "ScheduleKeyDeletion"),
    ("iam.amazonaws.com", "CreateGroup"),
    ("config.amazonaws.com", "StopConfigurationRecorder"),
    ("elasticfilesystem.amazonaws.com", "DeleteFileSystem"),
    ("events.amazonaws.com", "DeleteRule"),
    ("waf.amazonaws.com", "DeleteWebACL"),
];
const KEY_ACTIONS: &[&str] = &["DisableKey", "ScheduleKeyDeletion"];
const REGIONS: &[&str] = &["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "eu-central-1"];
const AGENTS: &[(&str, &str, &str)] = &[
    ("aws-sdk-go/1.44.298 (go1.20.6; linux; amd64)", "aws-sdk-go", "1.44.298"),
    ("aws-cli/2.13.5 Python/3.11.4 Linux/5.15.0 exe/x86_64.ubuntu.22 prompt/off command/kms.decrypt", "aws-cli", "2.13.5"),
    ("Boto3/1.28.10 md/Botocore#1.31.10 ua/2.0 os/linux#5.10.184 md/arch#x86_64 lang/python#3.9.16", "Boto3", "1.28.10"),
    ("aws-internal/3 aws-sdk-java/1.12.470 Linux/5.10.178 OpenJDK_64-Bit_Server_VM/25.372-b08", "aws-internal", "3"),
];

/// One generated event.
struct Event {
    time: String,
    source: &'static str,
    action: &'static str,
    error: Option<(&'static str, &'static str)>,
    region: &'static str,
    account: String,
    ip: String,
    agent: (&'static str, &'static str, &'static str),
    user: String,
    access_key: String,
    request_id: String,
    event_id: String,
    /// The ARN of the KMS key the call names.
    key_arn: String,
    read_only: bool,
}

/// Writes generated events; counts what it wrote.
#[derive(Clone, Debug)]
pub struct Generator {
    profile: Profile,
    rng: Rng,
    seconds: u64,
    /// Events written so far.
    pub events: u64,
    /// Events written so far that match the built-in rule.
    pub matches: u64,
    /// [`Traffic::Broad`]: events written so far as calls that fire a rule of Elastic's pack.
    pub fired: u64,
}

impl Generator {
    /// A generator of `profile` events from `seed`.
    pub fn new(profile: Profile, seed: u64) -> Generator {
        Generator { profile, rng: Rng(seed), seconds: 0, events: 0, matches: 0, fired: 0 }
    }

    fn event(&mut self) -> Event {
        let p = self.profile;
        let r = &mut self.rng;
        let u = r.unit();
        let (source, action, read_only, error) = if p.traffic == Traffic::Broad {
            if u < p.fire_share {
                self.fired += 1;
                let (src, action) = *r.pick(FIRING);
                (src, action, false, None)
            } else if r.unit() < p.kms_share {
                ("kms.amazonaws.com", *r.pick(KMS_ACTIONS), true, None)
            } else {
                let (src, actions, ro) = *r.pick(BROAD_SERVICES);
                let err = (r.below(50) == 0).then_some(("AccessDenied", "Access Denied"));
                (src, *r.pick(actions), ro, err)
            }
        } else if u < p.match_share {
            ("kms.amazonaws.com", *r.pick(KEY_ACTIONS), false, None)
        } else if r.unit() < p.kms_share {
            if p.near_miss_share > 0.0 && r.unit() < p.near_miss_share {
                let err = *r.pick(&[
                    ("AccessDenied", "User is not authorized to perform: kms:DisableKey"),
                    ("KMSInvalidStateException", "arn:aws:kms key is pending deletion"),
                ]);
                ("kms.amazonaws.com", *r.pick(KEY_ACTIONS), false, Some(err))
            } else if p.traffic == Traffic::KmsRotation {
                ("kms.amazonaws.com", *r.pick(KMS_ROTATION_ACTIONS), false, None)
            } else {
                ("kms.amazonaws.com", *r.pick(KMS_ACTIONS), true, None)
            }
        } else {
            let (src, actions, ro) = *r.pick(SERVICES);
            let err = (r.below(50) == 0).then_some(("AccessDenied", "Access Denied"));
            (src, *r.pick(actions), ro, err)
        };
        self.seconds += 1 + r.below(3) as u64;
        let s = self.seconds;
        let time = format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}Z",
            1 + (s / 86_400) % 28,
            (s / 3600) % 24,
            (s / 60) % 60,
            s % 60
        );
        let mut account = String::new();
        for _ in 0..12 {
            account.push(char::from(b'0' + r.below(10) as u8));
        }
        let ip =
            format!("{}.{}.{}.{}", 10 + r.below(200), r.below(256), r.below(256), 1 + r.below(254));
        let (mut request_id, mut event_id, mut key_id, mut access_key) =
            (String::new(), String::new(), String::new(), String::from("ASIA"));
        for out in [&mut request_id, &mut event_id, &mut key_id] {
            r.hex(8, out);
            out.push('-');
            r.hex(4, out);
            out.push_str("-4");
            r.hex(3, out);
            out.push('-');
            r.hex(4, out);
            out.push('-');
            r.hex(12, out);
        }
        for _ in 0..16 {
            access_key.push(char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[r.below(32)]));
        }
        let region = REGIONS[r.below(REGIONS.len())];
        let user = format!(
            "{}-{}",
            r.pick(&["deploy", "ci-runner", "alice", "bob", "data-pipeline", "backup"]),
            r.below(100)
        );
        let key_arn = format!("arn:aws:kms:{region}:{account}:key/{key_id}");
        Event {
            time,
            source,
            action,
            error,
            region,
            account,
            ip,
            agent: *r.pick(AGENTS),
            user,
            access_key,
            request_id,
            event_id,
            key_arn,
            read_only,
        }
    }

    /// The raw CloudTrail record of `e`.
    fn raw(e: &Event) -> String {
        let role = format!("arn:aws:iam::{}:role/{}", e.account, e.user);
        let key_arn = &e.key_arn;
        let mut s = format!(
            concat!(
                r#"{{"eventVersion":"1.08","userIdentity":{{"type":"AssumedRole","principalId":"AROA{ak}:{user}","arn":"arn:aws:sts::{acct}:assumed-role/{user}/session","#,
                r#""accountId":"{acct}","accessKeyId":"{ak}","sessionContext":{{"sessionIssuer":{{"type":"Role","principalId":"AROA{ak}","arn":"{role}","accountId":"{acct}","userName":"{user}"}},"#,
                r#""webIdFederationData":{{}},"attributes":{{"creationDate":"{time}","mfaAuthenticated":"false"}}}}}},"#,
                r#""eventTime":"{time}","eventSource":"{src}","eventName":"{action}","awsRegion":"{region}","sourceIPAddress":"{ip}","userAgent":"{ua}","#
            ),
            ak = e.access_key,
            user = e.user,
            acct = e.account,
            role = role,
            time = e.time,
            src = e.source,
            action = e.action,
            region = e.region,
            ip = e.ip,
            ua = e.agent.0,
        );
        if let Some((code, message)) = e.error {
            let _ = write!(s, r#""errorCode":"{code}","errorMessage":"{message}","#);
        }
        if e.source == "kms.amazonaws.com" {
            let _ = write!(
                s,
                r#""requestParameters":{{"keyId":"{key_arn}","encryptionAlgorithm":"SYMMETRIC_DEFAULT"{}}},"responseElements":null,"resources":[{{"accountId":"{}","type":"AWS::KMS::Key","ARN":"{key_arn}"}}],"#,
                if e.action == "ScheduleKeyDeletion" { r#","pendingWindowInDays":7"# } else { "" },
                e.account
            );
        } else {
            let _ = write!(
                s,
                r#""requestParameters":{{"roleArn":"{role}","durationSeconds":3600}},"responseElements":null,"#
            );
        }
        let _ = write!(
            s,
            concat!(
                r#""requestID":"{}","eventID":"{}","readOnly":{},"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"{}","eventCategory":"Management","#,
                r#""tlsDetails":{{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256","clientProvidedHostHeader":"{}.{}.amazonaws.com"}}}}"#
            ),
            e.request_id,
            e.event_id,
            e.read_only,
            e.account,
            e.source.split('.').next().unwrap_or("api"),
            e.region
        );
        s
    }

    /// Appends one event line (with `\n`) to `out`; returns whether it matches the rule.
    pub fn write_event(&mut self, out: &mut Vec<u8>) -> bool {
        let e = self.event();
        let matched =
            e.source == "kms.amazonaws.com" && KEY_ACTIONS.contains(&e.action) && e.error.is_none();
        self.events += 1;
        self.matches += u64::from(matched);
        let raw = Generator::raw(&e);
        let line = match self.profile.format {
            Format::Raw => raw,
            Format::Envelope => format!(
                r#"{{"@timestamp":"{}","agent":{{"type":"filebeat","version":"8.11.0","name":"ingest-{}"}},"data_stream":{{"dataset":"aws.cloudtrail","namespace":"default","type":"logs"}},"input":{{"type":"aws-s3"}},"aws":{{"s3":{{"bucket":{{"name":"cloudtrail-{}"}}}}}},"message":{}}}"#,
                e.time,
                e.region,
                e.account,
                json_string(&raw)
            ),
            Format::Ecs => Generator::ecs(&e, &raw),
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        matched
    }

    /// The ECS document the Elastic AWS integration makes of `e`.
    fn ecs(e: &Event, raw: &str) -> String {
        let outcome = if e.error.is_some() { "failure" } else { "success" };
        let error = e.error.map_or(String::new(), |(code, message)| {
            format!(r#""error_code":"{code}","error_message":"{message}","#)
        });
        let key_arn = &e.key_arn;
        format!(
            concat!(
                r#"{{"@timestamp":"{time}","agent":{{"type":"filebeat","version":"8.11.0","name":"ingest-{region}"}},"#,
                r#""aws":{{"cloudtrail":{{{error}"event_category":"Management","event_type":"AwsApiCall","event_version":"1.08","management_event":true,"#,
                r#""read_only":{ro},"recipient_account_id":"{acct}","request_id":"{rid}","request_parameters":"{{keyId={key_arn}}}","#,
                r#""user_identity":{{"access_key_id":"{ak}","arn":"arn:aws:sts::{acct}:assumed-role/{user}/session","type":"AssumedRole","#,
                r#""session_context":{{"creation_date":"{time}","mfa_authenticated":"false","session_issuer":{{"account_id":"{acct}","arn":"arn:aws:iam::{acct}:role/{user}","type":"Role"}}}}}}}}}},"#,
                r#""cloud":{{"account":{{"id":"{acct}"}},"provider":"aws","region":"{region}"}},"#,
                r#""data_stream":{{"dataset":"aws.cloudtrail","namespace":"default","type":"logs"}},"ecs":{{"version":"8.11.0"}},"#,
                r#""event":{{"action":"{action}","category":["configuration"],"created":"{time}","dataset":"aws.cloudtrail","id":"{eid}","ingested":"{time}","#,
                r#""kind":"event","module":"aws","original":{original},"outcome":"{outcome}","provider":"{src}","type":["change"]}},"#,
                r#""related":{{"entity":["{key_arn}","{ak}","arn:aws:iam::{acct}:role/{user}"],"user":["{user}"]}},"#,
                r#""source":{{"address":"{ip}","ip":"{ip}"}},"user":{{"id":"AROA{ak}:{user}","name":"{user}"}},"#,
                r#""user_agent":{{"device":{{"name":"Other"}},"name":"{ua_name}","original":"{ua}","version":"{ua_version}"}},"#,
                r#""input":{{"type":"aws-s3"}},"tags":["forwarded","aws-cloudtrail"]}}"#
            ),
            time = e.time,
            region = e.region,
            error = error,
            key_arn = key_arn,
            ro = e.read_only,
            acct = e.account,
            rid = e.request_id,
            ak = e.access_key,
            user = e.user,
            action = e.action,
            eid = e.event_id,
            original = json_string(raw),
            outcome = outcome,
            src = e.source,
            ip = e.ip,
            ua_name = e.agent.1,
            ua = e.agent.0,
            ua_version = e.agent.2,
        )
    }

    /// Appends events to `out` until it holds at least `bytes` more bytes.
    pub fn fill(&mut self, out: &mut Vec<u8>, bytes: usize) {
        let target = out.len() + bytes;
        while out.len() < target {
            self.write_event(out);
        }
    }
}

/// `s` as a JSON string literal (the generator's text holds no control characters).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8 + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seeded() {
        let gen = |seed| {
            let mut g = Generator::new(Profile::MIXED, seed);
            let mut out = Vec::new();
            g.fill(&mut out, 100_000);
            out
        };
        assert_eq!(gen(7), gen(7));
        assert_ne!(gen(7), gen(8));
    }

    #[test]
    fn profiles_hold_their_shares() {
        let mut g = Generator::new(Profile::ALL_CANDIDATES, 1);
        let mut out = Vec::new();
        for _ in 0..2000 {
            g.write_event(&mut out);
        }
        let share = g.matches as f64 / g.events as f64;
        assert!((0.45..0.55).contains(&share), "{share}");
        let mut g = Generator::new(Profile::NO_KMS, 1);
        let mut out = Vec::new();
        g.fill(&mut out, 1 << 20);
        assert_eq!(g.matches, 0);
        assert!(!String::from_utf8(out).unwrap().contains("kms.amazonaws.com"));
    }

    #[test]
    fn broad_traffic_fires_at_its_share() {
        let mut g = Generator::new(Profile::BROAD_FIRING, 5);
        let mut out = Vec::new();
        for _ in 0..20_000 {
            g.write_event(&mut out);
        }
        let share = g.fired as f64 / g.events as f64;
        assert!((0.008..0.012).contains(&share), "{share}");
        let text = String::from_utf8(out).unwrap();
        for (source, _) in FIRING {
            assert!(text.contains(source), "{source}");
        }
        let mut g = Generator::new(Profile::KMS_ROTATION, 5);
        let mut out = Vec::new();
        g.fill(&mut out, 1 << 20);
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.contains("leKey")));
        assert!(g.matches > 0 && g.matches < g.events / 50, "{} of {}", g.matches, g.events);
    }

    #[test]
    fn ecs_events_are_about_three_kilobytes_of_valid_json() {
        let mut g = Generator::new(Profile::MIXED, 3);
        for _ in 0..200 {
            let mut out = Vec::new();
            g.write_event(&mut out);
            assert!((2000..4000).contains(&out.len()), "{}", out.len());
            serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON");
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        }
    }
}
