//! Random rule packs and documents for the pack differential test and its fuzz target: KQL
//! rules over the fields Elastic's AWS rules read, with the rules' own terms, wildcards, `not`,
//! `field:*`, numbers, booleans and long values around `ignore_above`; documents in every shape
//! (ECS, raw records, log files, LookupEvents, EventBridge, envelopes, odd ones), with escapes,
//! dotted keys, removed values and near misses.
//!
//! Every choice comes from an [`Rng`]: seeded (the test) or read from bytes (the fuzz target,
//! so that libFuzzer's mutations are mutations of the choices).

/// What the generator produces on which the fast path and the reference disagreed when this
/// test was written (each a class of the report, with its minimal repro in
/// `known_disagreements` of the differential test). All on: the test asserts agreement everywhere. Switch one off to
/// look for other differences while it is being settled. (One known class has no switch:
/// objects inside arrays counted toward a flattened field's depth limit.)
#[derive(Clone, Copy)]
struct Coverage {
    /// `eventName` as an array, number, object or boolean (RULE.md section 4: "becomes a string").
    non_string_event_name: bool,
    /// `sourceIPAddress` as an array (RULES.md section 4: `source.ip` "when it is an IPv4/IPv6
    /// address").
    source_ip_arrays: bool,
    /// `userIdentity.userName`, the session issuer's and `additionalEventData.UserName` as
    /// arrays and numbers (renamed to `user.name`: arrays flattened, numbers as text).
    user_name_arrays_and_numbers: bool,
    /// `5e-324` and `4.9E-324` (Java writes Double.MIN_VALUE as "4.9E-324").
    subnormal_numbers: bool,
    /// Strings of 512 and 513 astral characters (1,024 and 1,026 UTF-16 code units) around
    /// `ignore_above` 1024.
    astral_strings: bool,
    /// ECS documents whose flattened fields are reached through a dotted key that goes past the
    /// field (`{"aws.cloudtrail.flattened.request_parameters.key": ...}`).
    dotted_keys_past_flattened_roots: bool,
    /// Raw flattened members whose `Map.toString()` form is within a few characters of 32,766.
    to_string_near_limit: bool,
}

const COVERAGE: Coverage = Coverage {
    non_string_event_name: true,
    source_ip_arrays: true,
    user_name_arrays_and_numbers: true,
    subnormal_numbers: true,
    astral_strings: true,
    dotted_keys_past_flattened_roots: true,
    to_string_near_limit: true,
};

// ---------------------------------------------------------------------------------------------
// Randomness

/// The source of every choice: xorshift64 (deterministic, no dependency), or, for the fuzz
/// target, the input's bytes eight at a time and xorshift64 once they run out.
pub struct Rng {
    state: u64,
    bytes: Vec<u8>,
    pos: usize,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, bytes: Vec::new(), pos: 0 }
    }

    /// A generator whose choices are read from `bytes` (then seeded by their length).
    pub fn from_bytes(bytes: &[u8]) -> Rng {
        Rng { bytes: bytes.to_vec(), ..Rng::new(bytes.len() as u64) }
    }

    fn next(&mut self) -> u64 {
        if let Some(chunk) = self.bytes.get(self.pos..self.pos + 8) {
            self.pos += 8;
            return u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        }
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn permille(&mut self, p: usize) -> bool {
        self.below(1000) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON written by hand, so that number tokens, escapes and key order are the generator's.

#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    /// A number token, written as is.
    Num(String),
    Str(String),
    /// String contents written between quotes as they are (lone surrogate escapes).
    Verbatim(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn s(text: impl AsRef<str>) -> J {
    J::Str(text.as_ref().to_string())
}

fn obj(members: Vec<(&str, J)>) -> J {
    J::Obj(members.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Writes JSON, escaping a character as `\uXXXX` with the given chance per mille.
fn write_json(rng: &mut Rng, j: &J, escape_permille: usize) -> String {
    fn string(rng: &mut Rng, text: &str, escape: usize, out: &mut String) {
        out.push('"');
        if escape == 0 && !text.chars().any(|c| c == '"' || c == '\\' || (c as u32) < 0x20) {
            out.push_str(text);
            out.push('"');
            return;
        }
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                // A blank as its short escape, as a record's own blanks in its envelope are.
                '\n' if rng.percent(50) => out.push_str("\\n"),
                '\t' if rng.percent(50) => out.push_str("\\t"),
                '\r' if rng.percent(50) => out.push_str("\\r"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if escape > 0 && rng.permille(escape) => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        if rng.percent(50) {
                            out.push_str(&format!("\\u{u:04X}"));
                        } else {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn value(rng: &mut Rng, j: &J, escape: usize, out: &mut String) {
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(token) => out.push_str(token),
            J::Str(text) => string(rng, text, escape, out),
            J::Verbatim(text) => {
                out.push('"');
                out.push_str(text);
                out.push('"');
            }
            J::Arr(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    value(rng, item, escape, out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push_str(if rng.percent(10) { ", " } else { "," });
                    }
                    string(rng, k, escape, out);
                    if rng.percent(4) {
                        // Blanks around the colon, as pretty-printed JSON has them.
                        let blank = |rng: &mut Rng| *rng.pick(&["", " ", "\n", "\t", "\r\n"]);
                        let (before, after) = (blank(rng), blank(rng));
                        out.push_str(before);
                        out.push(':');
                        out.push_str(after);
                    } else {
                        out.push(':');
                    }
                    value(rng, v, escape, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    value(rng, j, escape_permille, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Vocabulary: the terms of Elastic's AWS query rules, and near misses.

const DATASETS: &[&str] = &["aws.cloudtrail", "aws.cloudtrail", "aws.cloudtrail", "aws.vpcflow"];
const PROVIDERS: &[&str] = &[
    "kms.amazonaws.com",
    "iam.amazonaws.com",
    "ec2.amazonaws.com",
    "s3.amazonaws.com",
    "signin.amazonaws.com",
    "lambda.amazonaws.com",
    "sts.amazonaws.com",
    "guardduty.amazonaws.com",
];
const ACTIONS: &[&str] = &[
    "DisableKey",
    "ScheduleKeyDeletion",
    "ConsoleLogin",
    "UserAuthentication",
    "AuthorizeSecurityGroupIngress",
    "GetObject",
    "UpdateDetector",
    "CreateIPSet",
    "PublishLayerVersion20181031",
    "DeleteFunction20150331",
    "AssumeRoleWithWebIdentity",
    "CreateAccessKey",
];
const OUTCOMES: &[&str] = &["success", "failure", "Success", "unknown"];
const TYPES: &[&str] =
    &["AWSService", "IAMUser", "Root", "AssumedRole", "FederatedUser", "IdentityCenterUser"];
const ISSUER_TYPES: &[&str] = &["Role", "IAMUser", "Root"];
const ARNS: &[&str] = &[
    "arn:aws:iam::123456789012:user/terraform",
    "arn:aws:iam::123456789012:role/terraform-ci",
    "arn:aws:sts::123456789012:assumed-role/AWSServiceRoleForAmazonEKS/s",
    "arn:aws:iam::123456789012:user/alice",
    "arn:aws:iam::123456789012:root",
];
const KEYS: &[&str] = &["ASIAEXAMPLE", "AKIAEXAMPLE"];
const INVOKERS: &[&str] = &[
    "ssm.amazonaws.com",
    "securityhub.amazonaws.com",
    "lambda.amazonaws.com",
    "assets.marketplace.amazonaws.com",
];
const AGENTS: &[&str] = &[
    "AWS Internal",
    "aws-cli/2.17 terraform/1.5",
    "Mozilla/5.0 CloudShell",
    "AWS_Lambda_python3.12",
    "S3 Browser 10.1",
    "Boto3/1.34 pulumi",
];
const ADDRESSES: &[&str] = &[
    "1.2.3.4",
    "10.0.0.1",
    "2001:db8::1",
    "::1",
    "AWS Internal",
    "cloudformation.amazonaws.com",
    "sso.amazonaws.com",
    "256.1.1.1",
    "1.2.3",
];
const IPS: &[&str] = &["1.2.3.4", "10.0.0.1", "2001:db8::1", "::1"];
const USER_NAMES: &[&str] = &[
    "system:serviceaccount:kube-system:aws-load-balancer-controller",
    "system:serviceaccount:default:builder",
    "BedrockAPIKey-abc",
    "alice",
    "terraform",
];
const USER_IDS: &[&str] = &["AIDAEXAMPLE", "u-123", "AROAEXAMPLE:session"];
const ACCOUNTS: &[&str] = &["123456789012", "000000000000", "999"];
const ORGS: &[&str] =
    &["Amazon.com, Inc.", "AMAZON-02", "Google LLC", "MongoDB, Inc.", "Evil Corp"];
const UA_NAMES: &[&str] = &["Chrome", "aws-cli", "Other"];
const COUNTRIES: &[&str] = &["US", "RU"];
const ERRORS: &[&str] = &["AccessDenied", "AccessDeniedException", "ThrottlingException"];
const ERROR_MESSAGES: &[&str] = &["User is not authorized", "Rate exceeded"];
const REGIONS: &[&str] = &["us-east-1", "eu-west-1"];
const IDS: &[&str] = &["98675cf5-df23", "abc-123"];
const EVENT_TYPES: &[&str] = &["AwsApiCall", "AwsServiceEvent", "AwsConsoleSignIn"];
const CATEGORIES: &[&str] = &["Management", "Data"];
const REQUEST_STRINGS: &[&str] = &[
    "{includeManagementEvents=false}",
    "{policyArn=arn:aws:iam::aws:policy/AdministratorAccess}",
    "{name=eks, logging={clusterLogging=[{enabled=false}]}}",
    "{add={userIds=[1]}}",
];
const KEY_NAMES: &[&str] = &[
    "home/.aws/credentials",
    "x/id_rsa",
    "deploy.pem",
    "a/.env.local",
    "notes.txt",
    "private_key.txt",
    "server.key",
];
const CIDRS: &[&str] = &["0.0.0.0/0", "::/0", "10.0.0.0/8"];
const REASONS: &[&str] = &["requestParameters too large", "other"];
const GROUPS: &[&str] = &["sg-1", "sg-2"];
const CONSOLE_LOGIN: &[&str] = &["Success", "Failure", "FAILURE"];
const YES_NO: &[&str] = &["Yes", "No"];
/// Number tokens, each with its Java rendering among the others.
const NUMBERS: &[&str] = &[
    "22",
    "22.0",
    "1e2",
    "100.0",
    "100",
    "0",
    "-0",
    "1.50",
    "1.5",
    "1e-7",
    "1.0E-7",
    "1e7",
    "1.0E7",
    "9999999.0",
    "0.001",
    "0.0009",
    "9.0E-4",
    "3389",
    "123456789012345678901234567890",
    "5e-324",
    "4.9E-324",
    "-1.5E+3",
    "-1500.0",
    "1E2",
];
/// Wildcards of the real rules (and a few more), for any string field.
const WILDCARDS: &[&str] = &[
    "*terraform*",
    "*pulumi*",
    "Amazon*",
    "AMAZON*",
    r"system\:serviceaccount\:*",
    "*.pem",
    "*/.aws/credentials",
    "*/.env.*",
    "BedrockAPIKey-*",
    "arn*/terraform",
    "*AdministratorAccess*",
    "*includeManagementEvents*false*",
    "*CloudShell*",
    "*AWS_Lambda*",
    "PublishLayerVersion*",
    "DeleteFunction20*",
    "*S3 Browser*",
    "*AWS Internal*",
    "*amazonaws.com",
    "*Key*",
    "L*",
    "*\u{1F600}",
    "R*R",
    "*é",
    // Needles that start where a raw record's `eventName` does, and text only a non-string
    // name written back by Java holds (`{a=DisableKey}`).
    "*event*",
    "*eventName*",
    "*a=*",
    "*\u{FFFD}",
];

/// Strings around the `ignore_above` limits, in UTF-16 code units (é is one, 😀 two).
fn long_strings() -> Vec<String> {
    let mut long = vec![
        "L".repeat(1024),
        "L".repeat(1025),
        "é".repeat(1024),
        "é".repeat(1025),
        "R".repeat(8191),
        "R".repeat(8192),
    ];
    if COVERAGE.astral_strings {
        long.extend(["\u{1F600}".repeat(512), "\u{1F600}".repeat(513)]);
    }
    long
}

/// [`NUMBERS`] as far as [`COVERAGE`] has them.
fn numbers() -> Vec<&'static str> {
    NUMBERS
        .iter()
        .copied()
        .filter(|n| COVERAGE.subnormal_numbers || !["5e-324", "4.9E-324"].contains(n))
        .collect()
}

/// How a field's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Vals {
    /// Strings of the pool (and now and then a long one).
    Strs(&'static [&'static str]),
    /// Strings of the pool, numbers and booleans.
    Mixed(&'static [&'static str]),
    /// IP addresses only (an `ip` field takes nothing else).
    Ips,
    /// Number tokens (and their strings).
    Nums,
    /// `true`/`false`, as booleans or strings, on a keyword-like field.
    BoolOrStr,
    /// The boolean field: `true`/`false` as booleans or strings; queries take no wildcard.
    BoolField,
}

/// ECS fields the generated rules read and ECS documents hold.
const ECS_FIELDS: &[(&str, Vals)] = &[
    ("event.dataset", Vals::Strs(DATASETS)),
    ("data_stream.dataset", Vals::Strs(DATASETS)),
    ("event.provider", Vals::Strs(PROVIDERS)),
    ("event.action", Vals::Strs(ACTIONS)),
    ("event.outcome", Vals::Strs(OUTCOMES)),
    ("event.id", Vals::Mixed(IDS)),
    ("cloud.region", Vals::Strs(REGIONS)),
    ("source.address", Vals::Strs(ADDRESSES)),
    ("source.ip", Vals::Ips),
    ("user_agent.original", Vals::Strs(AGENTS)),
    ("user.name", Vals::Strs(USER_NAMES)),
    ("user.id", Vals::Mixed(USER_IDS)),
    ("cloud.account.id", Vals::Mixed(ACCOUNTS)),
    ("aws.cloudtrail.user_identity.type", Vals::Strs(TYPES)),
    ("aws.cloudtrail.user_identity.arn", Vals::Strs(ARNS)),
    ("aws.cloudtrail.user_identity.access_key_id", Vals::Strs(KEYS)),
    ("aws.cloudtrail.user_identity.invoked_by", Vals::Strs(INVOKERS)),
    ("aws.cloudtrail.user_identity.session_context.session_issuer.arn", Vals::Strs(ARNS)),
    ("aws.cloudtrail.user_identity.session_context.session_issuer.type", Vals::Strs(ISSUER_TYPES)),
    (
        "aws.cloudtrail.user_identity.session_context.session_issuer.principal_id",
        Vals::Mixed(USER_IDS),
    ),
    (
        "aws.cloudtrail.user_identity.session_context.session_issuer.account_id",
        Vals::Mixed(ACCOUNTS),
    ),
    ("aws.cloudtrail.error_code", Vals::Strs(ERRORS)),
    ("aws.cloudtrail.error_message", Vals::Strs(ERROR_MESSAGES)),
    ("aws.cloudtrail.event_type", Vals::Strs(EVENT_TYPES)),
    ("aws.cloudtrail.event_category", Vals::Strs(CATEGORIES)),
    ("aws.cloudtrail.recipient_account_id", Vals::Mixed(ACCOUNTS)),
    ("aws.cloudtrail.request_id", Vals::Mixed(IDS)),
    ("aws.cloudtrail.management_event", Vals::BoolOrStr),
    ("aws.cloudtrail.read_only", Vals::BoolField),
    // Unknown on raw shapes.
    ("source.as.organization.name", Vals::Strs(ORGS)),
    ("user_agent.name", Vals::Strs(UA_NAMES)),
    ("aws.cloudtrail.request_parameters", Vals::Strs(REQUEST_STRINGS)),
    ("aws.cloudtrail.response_elements", Vals::Strs(REQUEST_STRINGS)),
    ("source.geo.country_iso_code", Vals::Strs(COUNTRIES)),
    ("aws.cloudtrail.user_identity.session_context.mfa_authenticated", Vals::BoolOrStr),
];

/// How many of the last [`ECS_FIELDS`] the raw shapes cannot tell.
const UNKNOWN_ON_RAW: usize = 6;

/// Fields most rules read, drawn more often.
const CORE_FIELDS: &[usize] = &[0, 1, 2, 3, 4, 13, 10, 7];

/// The flattened fields: ECS root and raw member.
const ROOTS: [(&str, &str); 4] = [
    ("aws.cloudtrail.flattened.request_parameters", "requestParameters"),
    ("aws.cloudtrail.flattened.response_elements", "responseElements"),
    ("aws.cloudtrail.flattened.additional_eventdata", "additionalEventData"),
    ("aws.cloudtrail.flattened.service_event_details", "serviceEventDetails"),
];

/// Keys below the flattened roots (root index, dotted key, values).
const FLAT_KEYS: &[(usize, &str, Vals)] = &[
    (0, "key", Vals::Strs(KEY_NAMES)),
    (0, "reason", Vals::Strs(REASONS)),
    (0, "omitted", Vals::BoolOrStr),
    (0, "activate", Vals::BoolOrStr),
    (0, "enable", Vals::BoolOrStr),
    (0, "includeDeprecated", Vals::BoolOrStr),
    (0, "ipPermissions.items.ipRanges.items.cidrIp", Vals::Strs(CIDRS)),
    (0, "ipPermissions.items.fromPort", Vals::Nums),
    (0, "groupSet.items.groupId", Vals::Strs(GROUPS)),
    (0, "userName", Vals::Strs(USER_NAMES)),
    (0, "port", Vals::Nums),
    (1, "ConsoleLogin", Vals::Strs(CONSOLE_LOGIN)),
    (1, "credentials.accessKeyId", Vals::Strs(KEYS)),
    (1, "count", Vals::Nums),
    (2, "UserName", Vals::Strs(USER_NAMES)),
    (2, "MFAUsed", Vals::Strs(YES_NO)),
    (3, "UserAuthentication", Vals::Strs(CONSOLE_LOGIN)),
    (3, "size", Vals::Nums),
];

// ---------------------------------------------------------------------------------------------
// Values

/// The generator's state: its choices, and the fields the current rule set reads.
pub struct Gen {
    /// Where the choices come from.
    pub rng: Rng,
    long: Vec<String>,
    numbers: Vec<&'static str>,
    /// The fields a rule set's rules read ([`ECS_FIELDS`] and [`FLAT_KEYS`] indices): a few
    /// shared by its rules, as Elastic's rules share theirs.
    ecs_palette: Vec<usize>,
    flat_palette: Vec<usize>,
}

impl Gen {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Gen {
        Gen::with(Rng::new(seed))
    }

    /// A generator over `rng`.
    pub fn with(rng: Rng) -> Gen {
        Gen {
            rng,
            long: long_strings(),
            numbers: numbers(),
            ecs_palette: Vec::new(),
            flat_palette: Vec::new(),
        }
    }

    /// Draws the fields of the next rule set.
    pub fn palette(&mut self) {
        let mut ecs: Vec<usize> = CORE_FIELDS.to_vec();
        self.rng.shuffle(&mut ecs);
        ecs.truncate(3 + self.rng.below(3));
        for _ in 0..2 + self.rng.below(5) {
            ecs.push(self.rng.below(ECS_FIELDS.len()));
        }
        if self.rng.percent(50) {
            // One of the fields the raw shapes cannot tell.
            ecs.push(ECS_FIELDS.len() - 1 - self.rng.below(UNKNOWN_ON_RAW));
        }
        self.ecs_palette = ecs;
        self.flat_palette =
            (0..1 + self.rng.below(4)).map(|_| self.rng.below(FLAT_KEYS.len())).collect();
    }

    fn scalar(&mut self, vals: Vals) -> J {
        let r = &mut self.rng;
        match vals {
            Vals::Strs(pool) => {
                if r.permille(3) {
                    J::Str(r.pick(&self.long).clone())
                } else if r.permille(4) {
                    // A lone surrogate, indexed as U+FFFD.
                    let term = r.pick(pool).replace(['"', '\\'], "");
                    J::Verbatim(format!("{term}\\ud800"))
                } else {
                    s(r.pick(pool))
                }
            }
            Vals::Mixed(pool) => match r.below(100) {
                0..=19 => J::Num(r.pick(&self.numbers).to_string()),
                20..=24 => J::Bool(r.percent(50)),
                25..=29 => J::Num(r.pick(pool).to_string()).only_if_numeric(),
                _ => s(r.pick(pool)),
            },
            Vals::Ips => s(r.pick(IPS)),
            Vals::Nums => {
                if r.percent(80) {
                    J::Num(r.pick(&self.numbers).to_string())
                } else {
                    s(r.pick(&self.numbers))
                }
            }
            Vals::BoolOrStr | Vals::BoolField => {
                let b = r.percent(50);
                if r.percent(70) {
                    J::Bool(b)
                } else {
                    s(if b { "true" } else { "false" })
                }
            }
        }
    }

    /// A field's value in an ECS document: mostly one scalar, sometimes several, null, empty.
    fn ecs_value(&mut self, vals: Vals) -> J {
        match self.rng.below(100) {
            0..=71 => self.scalar(vals),
            72..=85 => {
                let n = 1 + self.rng.below(3);
                let mut items: Vec<J> = (0..n).map(|_| self.scalar(vals)).collect();
                if self.rng.percent(15) {
                    items.push(J::Null);
                }
                if self.rng.percent(10) {
                    items = vec![J::Arr(items)];
                }
                J::Arr(items)
            }
            86..=90 => J::Null,
            91..=93 => J::Arr(Vec::new()),
            94..=95 if !matches!(vals, Vals::Ips | Vals::BoolField) => {
                s(self.rng.pick(&["", "-", "none"]))
            }
            _ => self.scalar(vals),
        }
    }

    /// A field's value in a raw record: as in ECS, plus what the pipeline removes.
    fn raw_value(&mut self, vals: Vals) -> J {
        let vals = match vals {
            Vals::Ips => Vals::Strs(ADDRESSES),
            other => other,
        };
        match self.rng.below(100) {
            0..=4 => s(self.rng.pick(&["", "-", "none"])),
            5..=6 => J::Arr(vec![J::Null, s("")]),
            7 => J::Obj(Vec::new()),
            8..=10 if !matches!(vals, Vals::BoolField) => {
                J::Num(self.rng.pick(&self.numbers).to_string())
            }
            _ if matches!(vals, Vals::BoolField) => self.scalar(vals),
            _ => {
                let v = self.ecs_value(vals);
                match v {
                    // A string "" is removed; keep raw booleans fields plain.
                    J::Arr(items) if items.is_empty() => J::Null,
                    v => v,
                }
            }
        }
    }
}

trait OnlyIfNumeric {
    fn only_if_numeric(self) -> J;
}

impl OnlyIfNumeric for J {
    /// A pool term as a number token when it is one (account ids), else as a string.
    fn only_if_numeric(self) -> J {
        match self {
            J::Num(t) if t.bytes().all(|b| b.is_ascii_digit()) && !t.starts_with('0') => J::Num(t),
            J::Num(t) => J::Str(t),
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Documents

/// A key of an object being rendered: the (path, value) pairs below it, or its own value.
type Group = (String, Vec<(String, J)>, Option<J>);

/// Renders (dotted path, value) pairs as an object, each path split at a random point into a
/// dotted key and nested objects, objects now and then spread over an array of objects. No
/// path is a prefix of another, so nothing collides.
fn render(g: &mut Gen, items: Vec<(String, J)>, dotted: usize) -> J {
    // Each top-level key: the paths below it, or its value.
    let mut groups: Vec<Group> = Vec::new();
    for (path, value) in items {
        let segments: Vec<&str> = path.split('.').collect();
        let k = if g.rng.percent(dotted) { 1 + g.rng.below(segments.len()) } else { 1 };
        let key = segments[..k].join(".");
        let rest = segments[k..].join(".");
        let at = match groups.iter().position(|(k, _, _)| *k == key) {
            Some(at) => at,
            None => {
                groups.push((key, Vec::new(), None));
                groups.len() - 1
            }
        };
        if rest.is_empty() {
            groups[at].2 = Some(value);
        } else {
            groups[at].1.push((rest, value));
        }
    }
    let mut members = Vec::new();
    for (key, nested, leaf) in groups {
        match leaf {
            Some(value) => members.push((key, value)),
            None if nested.len() > 1 && g.rng.percent(8) => {
                let split = 1 + g.rng.below(nested.len() - 1);
                let mut nested = nested;
                let second = nested.split_off(split);
                let first = render(g, nested, dotted);
                let second = render(g, second, dotted);
                members.push((key, J::Arr(vec![first, second])));
            }
            None => {
                let inner = render(g, nested, dotted);
                if g.rng.percent(3) {
                    members.push((key, J::Arr(vec![inner])));
                } else {
                    members.push((key, inner));
                }
            }
        }
    }
    g.rng.shuffle(&mut members);
    J::Obj(members)
}

/// A flattened subtree's (key, value) pairs, with the padding and depth that probe the limits.
fn flat_items(g: &mut Gen, root: usize, raw: bool) -> Vec<(String, J)> {
    let keys: Vec<&(usize, &str, Vals)> = FLAT_KEYS.iter().filter(|(r, _, _)| *r == root).collect();
    let mut items: Vec<(String, J)> = Vec::new();
    let n = 1 + g.rng.below(keys.len().min(4));
    for _ in 0..n {
        let (_, key, vals) = **g.rng.pick(&keys);
        if items.iter().any(|(k, _)| k == key) {
            continue;
        }
        let value = match (raw, key) {
            // What the pipeline makes of a `ConsoleLogin` that is not a string is not specified.
            (true, "ConsoleLogin") if g.rng.percent(80) => g.scalar(vals),
            (true, "ConsoleLogin") => s(""),
            (true, "UserName") if !COVERAGE.user_name_arrays_and_numbers => g.scalar(vals),
            (true, _) => g.raw_value(vals),
            (false, _) => g.ecs_value(vals),
        };
        items.push((key.to_string(), value));
    }
    if g.rng.permille(5) {
        // A leaf whose key and value straddle 32,766 bytes (ECS) or a member whose string
        // form straddles 32,766 characters (raw); sometimes in two-byte characters.
        let len = if !raw || COVERAGE.to_string_near_limit {
            32_740 + g.rng.below(40)
        } else if g.rng.percent(50) {
            32_000
        } else {
            33_000
        };
        let text = if g.rng.percent(20) { "é".repeat(len / 2) } else { "p".repeat(len) };
        items.push(("pad".to_string(), J::Str(text)));
    }
    if g.rng.permille(if raw { 5 } else { 12 }) {
        // A chain of objects around the depth limit (20 levels, the field's own object first).
        let levels = 17 + g.rng.below(6);
        let key = vec!["d"; levels].join(".");
        let leaf = if g.rng.percent(30) { J::Obj(Vec::new()) } else { s("deep") };
        items.push((key, leaf));
    }
    items
}

/// An ECS document.
fn ecs_document(g: &mut Gen) -> J {
    let mut items: Vec<(String, J)> = vec![("@timestamp".into(), s("2024-10-10T15:07:03.000Z"))];
    let dataset_chance = g.rng.below(100);
    for (path, vals) in ECS_FIELDS {
        let chance = match *path {
            "event.dataset" | "data_stream.dataset" => dataset_chance,
            "event.provider" | "event.action" | "event.outcome" => 85,
            _ => 18,
        };
        if g.rng.percent(chance) {
            items.push((path.to_string(), g.ecs_value(*vals)));
        }
    }
    for (root, (path, _)) in ROOTS.iter().enumerate() {
        if g.rng.percent(35) {
            let flat = flat_items(g, root, false);
            if COVERAGE.dotted_keys_past_flattened_roots {
                for (key, value) in flat {
                    items.push((format!("{path}.{key}"), value));
                }
            } else {
                // The field's object as one value: no key goes past the field.
                let dotted = *g.rng.pick(&[0, 30]);
                items.push((path.to_string(), render(g, flat, dotted)));
            }
        }
    }
    if g.rng.percent(20) {
        let message = if g.rng.percent(50) { s("hello world") } else { s("{\"eventSource\":") };
        items.push(("message".into(), message));
    }
    g.rng.shuffle(&mut items);
    let dotted = *g.rng.pick(&[0, 30, 60, 100]);
    render(g, items, dotted)
}

/// A raw CloudTrail record.
fn raw_record(g: &mut Gen) -> J {
    let mut m: Vec<(&str, J)> = vec![("eventVersion", s("1.08"))];
    m.push(("eventSource", g.raw_value(Vals::Strs(PROVIDERS))));
    let name = match g.rng.below(100) {
        0..=84 => s(g.rng.pick(ACTIONS)),
        _ if !COVERAGE.non_string_event_name => s(g.rng.pick(&["", "-", "none", "DisableKey"])),
        85..=87 => J::Arr(vec![s(g.rng.pick(ACTIONS))]),
        88..=89 => J::Num(g.rng.pick(&g.numbers).to_string()),
        90..=91 => obj(vec![("a", s(g.rng.pick(ACTIONS)))]),
        92 => J::Bool(true),
        _ => g.raw_value(Vals::Strs(ACTIONS)),
    };
    let event_name = match &name {
        J::Str(n) => n.clone(),
        _ => String::new(),
    };
    m.push(("eventName", name));
    let plain: [(&str, Vals); 10] = [
        ("awsRegion", Vals::Strs(REGIONS)),
        ("eventID", Vals::Mixed(IDS)),
        ("eventType", Vals::Strs(EVENT_TYPES)),
        ("eventCategory", Vals::Strs(CATEGORIES)),
        ("recipientAccountId", Vals::Mixed(ACCOUNTS)),
        ("requestID", Vals::Mixed(IDS)),
        ("managementEvent", Vals::BoolOrStr),
        ("readOnly", Vals::BoolField),
        ("sourceIPAddress", Vals::Ips),
        ("userAgent", Vals::Strs(AGENTS)),
    ];
    for (key, vals) in plain {
        if g.rng.percent(50) {
            let value = match g.raw_value(vals) {
                J::Arr(_) if key == "sourceIPAddress" && !COVERAGE.source_ip_arrays => {
                    s(g.rng.pick(ADDRESSES))
                }
                v => v,
            };
            m.push((key, value));
        }
    }
    if g.rng.percent(85) {
        let mut identity: Vec<(&str, J)> = Vec::new();
        let fields: [(&str, Vals, usize); 7] = [
            ("type", Vals::Strs(TYPES), 85),
            ("arn", Vals::Strs(ARNS), 60),
            ("accessKeyId", Vals::Strs(KEYS), 40),
            ("invokedBy", Vals::Strs(INVOKERS), 30),
            ("userName", Vals::Strs(USER_NAMES), 40),
            ("principalId", Vals::Mixed(USER_IDS), 50),
            ("accountId", Vals::Mixed(ACCOUNTS), 60),
        ];
        for (key, vals, chance) in fields {
            if g.rng.percent(chance) {
                let v = match key {
                    // The pipeline's tests of the type take a string (an array: not specified).
                    "type" if g.rng.percent(90) => g.scalar(vals),
                    "type" => s(""),
                    "userName" if !COVERAGE.user_name_arrays_and_numbers => {
                        s(g.rng.pick(USER_NAMES))
                    }
                    _ if g.rng.percent(85) => g.scalar(vals),
                    _ => g.raw_value(vals),
                };
                identity.push((key, v));
            }
        }
        if g.rng.percent(40) {
            let mut issuer: Vec<(&str, J)> = Vec::new();
            let fields: [(&str, Vals); 5] = [
                ("userName", Vals::Strs(USER_NAMES)),
                ("arn", Vals::Strs(ARNS)),
                ("type", Vals::Strs(ISSUER_TYPES)),
                ("principalId", Vals::Mixed(USER_IDS)),
                ("accountId", Vals::Mixed(ACCOUNTS)),
            ];
            for (key, vals) in fields {
                if g.rng.percent(60) {
                    let v = match key {
                        "type" => g.scalar(vals),
                        "userName" if !COVERAGE.user_name_arrays_and_numbers => {
                            s(g.rng.pick(USER_NAMES))
                        }
                        _ if g.rng.percent(85) => g.scalar(vals),
                        _ => g.raw_value(vals),
                    };
                    issuer.push((key, v));
                }
            }
            let attributes = obj(vec![("mfaAuthenticated", s("true"))]);
            identity.push((
                "sessionContext",
                obj(vec![
                    (
                        "sessionIssuer",
                        J::Obj(issuer.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
                    ),
                    ("attributes", attributes),
                ]),
            ));
        }
        if g.rng.percent(30) {
            let user = if g.rng.percent(80) { g.scalar(Vals::Mixed(USER_IDS)) } else { s("") };
            identity.push(("onBehalfOf", obj(vec![("userId", user)])));
        }
        g.rng.shuffle(&mut identity);
        m.push(("userIdentity", obj(identity)));
    }
    if g.rng.percent(20) {
        m.push(("errorCode", g.raw_value(Vals::Strs(ERRORS))));
    }
    if g.rng.percent(15) {
        m.push(("errorMessage", g.raw_value(Vals::Strs(ERROR_MESSAGES))));
    }
    for (root, (_, member)) in ROOTS.iter().enumerate() {
        let related = match root {
            1 => event_name == "ConsoleLogin",
            2 => event_name == "UserAuthentication",
            _ => false,
        };
        if g.rng.percent(if related { 90 } else { 40 }) {
            let value = match g.rng.below(100) {
                0..=2 => J::Null,
                3..=4 => J::Obj(Vec::new()),
                5..=6 => obj(vec![("a", J::Null), ("b", s("-"))]),
                _ => {
                    let items = flat_items(g, root, true);
                    let dotted = if g.rng.percent(80) { 0 } else { 30 };
                    render(g, items, dotted)
                }
            };
            m.push((member, value));
        }
    }
    if g.rng.percent(30) {
        m.push(("tlsDetails", obj(vec![("tlsVersion", s("TLSv1.3"))])));
    }
    g.rng.shuffle(&mut m);
    obj(m)
}

/// The kinds of documents, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Made {
    /// An ECS document.
    Ecs,
    /// A raw CloudTrail record.
    Raw,
    /// A CloudTrail log file.
    Records,
    /// A LookupEvents response.
    LookupEvents,
    /// An EventBridge event.
    EventBridge,
    /// A shipper envelope.
    Envelope,
    /// None of these (an array, a string, an object of no shape).
    Odd,
}

/// One line: a document of some shape, now and then made invalid.
pub fn line(g: &mut Gen) -> (Made, Vec<u8>) {
    let escape = if g.rng.percent(10) { 30 } else { 0 };
    let (made, doc) = match g.rng.below(100) {
        0..=34 => (Made::Ecs, ecs_document(g)),
        35..=54 => (Made::Raw, raw_record(g)),
        55..=66 => {
            let n = 1 + g.rng.below(2);
            let mut records: Vec<J> = (0..n).map(|_| raw_record(g)).collect();
            if g.rng.percent(5) {
                records.push(obj(vec![("eventSource", s("kms.amazonaws.com"))]));
            }
            (Made::Records, obj(vec![("Records", J::Arr(records))]))
        }
        67..=74 => {
            let n = 1 + g.rng.below(2);
            let mut events: Vec<J> = Vec::new();
            for _ in 0..n {
                let record = raw_record(g);
                let text = write_json(&mut g.rng, &record, escape);
                events.push(obj(vec![
                    ("EventId", s("e-1")),
                    ("EventName", s(g.rng.pick(ACTIONS))),
                    ("CloudTrailEvent", J::Str(text)),
                ]));
            }
            if g.rng.percent(5) {
                events.push(obj(vec![("CloudTrailEvent", s("{\"eventSource\":1}"))]));
            }
            (Made::LookupEvents, obj(vec![("Events", J::Arr(events)), ("NextToken", s("t"))]))
        }
        75..=82 => {
            let detail_type =
                if g.rng.percent(95) { "AWS API Call via CloudTrail" } else { "Scheduled Event" };
            let record = raw_record(g);
            let doc = obj(vec![
                ("version", s("0")),
                ("detail-type", s(detail_type)),
                ("source", s("aws.kms")),
                ("detail", record),
            ]);
            (Made::EventBridge, doc)
        }
        83..=95 => {
            let inner = if g.rng.percent(75) {
                raw_record(g)
            } else {
                let n = 1 + g.rng.below(2);
                obj(vec![("Records", J::Arr((0..n).map(|_| raw_record(g)).collect()))])
            };
            let text = write_json(&mut g.rng, &inner, escape);
            let mut members = vec![
                ("message", J::Str(text)),
                ("source_type", s("aws_s3")),
                ("bucket", s("trail-bucket")),
            ];
            match g.rng.below(6) {
                0 => members.push(("event", obj(vec![("dataset", s("aws.cloudtrail"))]))),
                1 => members.push(("data_stream.dataset", s("aws.cloudtrail"))),
                2 => members.push(("event.dataset", s("aws.vpcflow"))),
                3 => members.push(("event.dataset", J::Null)),
                _ => {}
            }
            (Made::Envelope, obj(members))
        }
        _ => {
            let doc = match g.rng.below(5) {
                0 => obj(vec![("Records", J::Arr(Vec::new()))]),
                1 => obj(vec![("Events", J::Arr(Vec::new()))]),
                2 => obj(Vec::new()),
                3 => J::Arr(vec![raw_record(g)]),
                _ => obj(vec![
                    ("eventSource", s("kms.amazonaws.com")),
                    ("eventName", J::Verbatim("\\ud800x".into())),
                ]),
            };
            (Made::Odd, doc)
        }
    };
    let text = write_json(&mut g.rng, &doc, escape);
    let mut bytes = text.into_bytes();
    match g.rng.below(1000) {
        0..=7 => bytes.extend_from_slice(b" {}"),
        8..=12 => bytes.truncate(bytes.len() / 2),
        13..=20 if bytes.len() > 2 && bytes[0] == b'{' => {
            let mut dup = b"{\"dup\":1,\"dup\":2,".to_vec();
            dup.extend_from_slice(&bytes[1..]);
            bytes = dup;
        }
        21..=25 => {
            let at = bytes.iter().position(|&b| b == b'"').map_or(0, |p| p + 1);
            bytes.insert(at, 0xFF);
        }
        26..=35 => bytes.splice(0..0, *b"\xEF\xBB\xBF").for_each(drop),
        36..=45 => bytes.extend_from_slice(b"\r"),
        46..=50 => bytes.extend_from_slice(b"  \t"),
        _ => {}
    }
    (made, bytes)
}

// ---------------------------------------------------------------------------------------------
// Rules

fn keyword(g: &mut Gen, word: &str) -> String {
    match g.rng.below(10) {
        0 => word.to_uppercase(),
        1 => {
            let mut w = word.to_string();
            w[..1].make_ascii_uppercase();
            w
        }
        _ => word.to_string(),
    }
}

fn quoted(term: &str) -> String {
    format!("\"{}\"", term.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A term as KQL text: unquoted (escaped) when it can be, else quoted.
fn exact(g: &mut Gen, term: &str) -> String {
    let keyword = ["and", "or", "not"].contains(&term.to_ascii_lowercase().as_str());
    if term.is_empty() || keyword || term.chars().any(char::is_whitespace) || g.rng.percent(40) {
        return quoted(term);
    }
    unquoted_piece(term)
}

fn unquoted_piece(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\():<>\"*{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A wildcard pattern made from a term: a whitespace-free part of it, cut and starred.
fn wildcard_of(g: &mut Gen, term: &str) -> String {
    let words: Vec<&str> = term.split_whitespace().collect();
    let word: Vec<char> = g.rng.pick(&words).chars().collect();
    let a = g.rng.below(word.len() + 1);
    let b = a + g.rng.below(word.len() - a + 1);
    let piece = |from: usize, to: usize| unquoted_piece(&word[from..to].iter().collect::<String>());
    let pattern = match g.rng.below(5) {
        0 => format!("*{}*", piece(a, b)),
        1 => format!("{}*", piece(0, b)),
        2 => format!("*{}", piece(a, word.len())),
        3 => format!("{}*{}", piece(0, a), piece(b, word.len())),
        _ => format!("{}*{}*{}", piece(0, a), piece(a, b), piece(b, word.len())),
    };
    if pattern.chars().all(|c| c == '*') {
        format!("{pattern}x")
    } else {
        pattern
    }
}

/// A term of a field's pool, a long one, or a near miss.
fn term(g: &mut Gen, pool: &[&str]) -> String {
    let t = g.rng.pick(pool).to_string();
    match g.rng.below(100) {
        0..=3 => g.rng.pick(&g.long).clone(),
        4..=6 => t.to_lowercase(),
        7..=8 => format!("{t} "),
        9 => "nomatch".into(),
        _ => t,
    }
}

/// One value of a `field: value` condition.
fn value(g: &mut Gen, vals: Vals) -> String {
    if g.rng.percent(8) {
        return "*".into();
    }
    match vals {
        Vals::Strs(pool) | Vals::Mixed(pool) => {
            let pool: Vec<&str> = match vals {
                Vals::Mixed(_) if g.rng.percent(30) => g.numbers.clone(),
                _ => pool.to_vec(),
            };
            match g.rng.below(100) {
                0..=59 => {
                    let t = term(g, &pool);
                    exact(g, &t)
                }
                60..=89 => {
                    let t = term(g, &pool);
                    if t.trim().is_empty() {
                        exact(g, &t)
                    } else {
                        wildcard_of(g, &t)
                    }
                }
                _ => g.rng.pick(WILDCARDS).to_string(),
            }
        }
        Vals::Ips => {
            let t = g.rng.pick(IPS).to_string();
            exact(g, &t)
        }
        Vals::Nums => {
            let t = g.rng.pick(&g.numbers).to_string();
            match g.rng.below(10) {
                0 => wildcard_of(g, &t),
                1..=2 => quoted(&t),
                _ => t,
            }
        }
        Vals::BoolOrStr | Vals::BoolField => {
            let b = if g.rng.percent(50) { "true" } else { "false" };
            if g.rng.percent(25) {
                quoted(b)
            } else {
                b.to_string()
            }
        }
    }
}

/// The values part of a condition: one value, or a list with `or`, `and`, `not`.
fn values(g: &mut Gen, vals: Vals) -> String {
    match g.rng.below(100) {
        0..=69 => value(g, vals),
        70..=84 => {
            let n = 2 + g.rng.below(3);
            let or = format!(" {} ", keyword(g, "or"));
            let list: Vec<String> = (0..n).map(|_| value(g, vals)).collect();
            format!("({})", list.join(&or))
        }
        85..=89 => {
            let (a, b) = (value(g, vals), value(g, vals));
            format!("({a} {} {} {b})", keyword(g, "and"), keyword(g, "not"))
        }
        90..=94 => format!("({} {})", keyword(g, "not"), value(g, vals)),
        _ => format!("{} {}", keyword(g, "not"), value(g, vals)),
    }
}

fn condition(g: &mut Gen) -> String {
    let (field, vals) = match g.rng.below(100) {
        0..=69 => ECS_FIELDS[*g.rng.pick(&g.ecs_palette)],
        70..=96 => {
            let (root, key, vals) = FLAT_KEYS[*g.rng.pick(&g.flat_palette)];
            return format!("{}.{key}: {}", ROOTS[root].0, values(g, vals));
        }
        _ => {
            let root = g.rng.below(ROOTS.len());
            let vals = Vals::Strs(&["Success", "deep", "sg-1", "alice", "22"]);
            return format!("{}: {}", ROOTS[root].0, values(g, vals));
        }
    };
    let colon = *g.rng.pick(&[":", ": ", " : "]);
    format!("{field}{colon}{}", values(g, vals))
}

fn clause(g: &mut Gen, depth: usize) -> String {
    match g.rng.below(100) {
        0..=11 if depth < 2 => format!("({})", query(g, depth + 1)),
        12..=25 => format!("{} {}", keyword(g, "not"), clause(g, depth)),
        _ => condition(g),
    }
}

/// A rule's KQL text over the current rule set's fields (`depth` 0 for a whole query).
pub fn query(g: &mut Gen, depth: usize) -> String {
    let n = 1 + g.rng.below(4);
    let op = if g.rng.percent(75) { "and" } else { "or" };
    let parts: Vec<String> = (0..n).map(|_| clause(g, depth)).collect();
    parts.join(&format!(" {} ", keyword(g, op)))
}
