//! Why a document did not match, for `--explain` and for the warnings that keep a miss from
//! going unnoticed.
//!
//! The evaluator records a [`Miss`] for every document it decides not to match: a small `Copy`
//! value, so the hot path pays one store. [`crate::Matcher::explain`] turns it into an
//! [`Explanation`] with words.

use std::fmt;

use crate::shape::Shape;

/// The first clause (or condition) that failed, in the rule's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// An ECS field the rule reads has no value.
    NoValue(&'static str),
    /// An ECS field has values, none of them a string equal to a term.
    NotEqual(&'static str),
    /// Every clause holds but the dataset's, whose field has no value: a stream whose dataset is
    /// a constant of its index (declare it with `--assume-dataset`).
    DatasetAbsent(&'static str),
    /// A raw record lacks a key the mapping reads (after the pipeline's removal of empty
    /// values).
    RawAbsent(&'static str),
    /// A raw record's key holds no string equal to a term.
    RawNotEqual(&'static str),
    /// A raw record's key is rendered through a template and is not a string (`kind` is its
    /// JSON type), so it becomes text such as `{0=DisableKey}` that equals no term.
    RawRendered {
        /// The raw key, `eventName`.
        key: &'static str,
        /// `an array`, `an object`, `a number`, `a boolean`.
        kind: &'static str,
    },
    /// A raw record's outcome is `failure` because this error key holds a value.
    RawFailed(&'static str),
    /// A container of records (a log file, a LookupEvents response) holds this many records,
    /// and none matches.
    NoRecord(usize),
    /// No shape the matcher recognises applies (`--shapes` left ECS out).
    NoShape,
}

/// What [`crate::Matcher::explain`] says about one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explanation {
    /// It matches, as this shape.
    Match(Shape),
    /// It is not a document Elasticsearch would index; why.
    Invalid(String),
    /// A valid document that does not match.
    NoMatch {
        /// The shape it was recognised as, if any.
        shape: Option<Shape>,
        /// What failed first.
        miss: Miss,
    },
}

impl Explanation {
    /// Whether the document fails only because it has no dataset value (see
    /// [`Miss::DatasetAbsent`]).
    pub fn is_dataset_absent(&self) -> bool {
        matches!(self, Explanation::NoMatch { miss: Miss::DatasetAbsent(_), .. })
    }
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Miss::NoValue(field) => write!(f, "{field} has no value"),
            Miss::NotEqual(field) => write!(f, "no value of {field} equals a term of the rule"),
            Miss::DatasetAbsent(field) => write!(
                f,
                "every clause holds but {field}, which has no value \
                 (declare the stream's dataset with --assume-dataset aws.cloudtrail)"
            ),
            Miss::RawAbsent(key) => write!(f, "the record has no {key}"),
            Miss::RawNotEqual(key) => write!(f, "the record's {key} equals no term of the rule"),
            Miss::RawRendered { key, kind } => write!(
                f,
                "the record's {key} is {kind}, which the ingest pipeline renders as text \
                 that equals no term"
            ),
            Miss::RawFailed(key) => {
                write!(f, "the record has {key}, so event.outcome is failure")
            }
            Miss::NoRecord(n) => write!(f, "none of its {n} records matches"),
            Miss::NoShape => write!(f, "no shape applies (see --shapes)"),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Explanation::Match(shape) => write!(f, "matches as {shape}"),
            Explanation::Invalid(why) => write!(f, "invalid: {why}"),
            Explanation::NoMatch { shape: Some(shape), miss } => write!(f, "{shape}: {miss}"),
            Explanation::NoMatch { shape: None, miss } => write!(f, "{miss}"),
        }
    }
}
