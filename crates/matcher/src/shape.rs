//! The shapes CloudTrail events take in a shipping pipeline (spec section 4).

use std::fmt;
use std::str::FromStr;

/// The shape a document was recognised as. Shapes are tried in this order; the first that
/// applies decides how the document is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// A CloudTrail log file as delivered to S3, `{"Records":[...]}`, every element a raw record.
    Records,
    /// An `aws cloudtrail lookup-events` response, `{"Events":[{"CloudTrailEvent":"<record>",...}]}`,
    /// each element's `CloudTrailEvent` a raw record as a JSON string.
    LookupEvents,
    /// An EventBridge event, `"detail-type":"AWS API Call via CloudTrail"`, record in `detail`.
    EventBridge,
    /// A raw CloudTrail record (an object with `eventSource` and `eventName`).
    Raw,
    /// A shipper envelope: a raw record or a CloudTrail log file as JSON in `message`, with
    /// the dataset `aws.cloudtrail` (Elastic Agent, Filebeat) or none at all (Vector's `aws_s3`).
    Envelope,
    /// An ECS document as the Elastic AWS integration indexes it.
    Ecs,
}

impl Shape {
    /// Every shape, in recognition order.
    pub const ALL: [Shape; 6] = [
        Shape::Records,
        Shape::LookupEvents,
        Shape::EventBridge,
        Shape::Raw,
        Shape::Envelope,
        Shape::Ecs,
    ];

    /// The shape's name on the command line and in statistics.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Records => "records",
            Shape::LookupEvents => "lookupevents",
            Shape::EventBridge => "eventbridge",
            Shape::Raw => "raw",
            Shape::Envelope => "envelope",
            Shape::Ecs => "ecs",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error returned when a shape name is not one of [`Shape::name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownShape(String);

impl fmt::Display for UnknownShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Shape::ALL.iter().map(|s| s.name()).collect();
        write!(f, "unknown shape '{}' (expected one of: {})", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownShape {}

impl FromStr for Shape {
    type Err = UnknownShape;

    fn from_str(s: &str) -> Result<Shape, UnknownShape> {
        Shape::ALL.into_iter().find(|shape| shape.name() == s).ok_or_else(|| UnknownShape(s.into()))
    }
}

/// A set of shapes the matcher may recognise. Restricting it (for example to ECS only) makes
/// documents of the other shapes fall through to the next shape that is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shapes(u8);

impl Shapes {
    /// Every shape.
    pub fn all() -> Shapes {
        Shapes::of(&Shape::ALL)
    }

    /// Exactly the given shapes.
    pub fn of(shapes: &[Shape]) -> Shapes {
        Shapes(shapes.iter().fold(0, |acc, s| acc | s.bit()))
    }

    /// Whether `shape` is in the set.
    pub fn contains(self, shape: Shape) -> bool {
        self.0 & shape.bit() != 0
    }
}

impl Default for Shapes {
    fn default() -> Shapes {
        Shapes::all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for shape in Shape::ALL {
            assert_eq!(shape.name().parse::<Shape>(), Ok(shape));
        }
        assert!("ECS".parse::<Shape>().is_err());
    }

    #[test]
    fn sets_hold_what_they_were_given() {
        let only = Shapes::of(&[Shape::Ecs, Shape::Raw]);
        assert!(only.contains(Shape::Ecs) && only.contains(Shape::Raw));
        assert!(!only.contains(Shape::Records));
        assert!(Shape::ALL.iter().all(|&s| Shapes::all().contains(s)));
    }
}
