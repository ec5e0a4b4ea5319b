//! What the join operators share: [`Either`], the element type of a two-input join fed as one stream, and
//! [`JoinKind`], which sides keep their unmatched elements.
//!
//! The operators themselves are in `ops/`: `temporal_join` (stream against a versioned table, as of the
//! stream's event time), `interval_join` (stream against stream within a time interval), `window_join`
//! (stream against stream within the same window) and `table_join` (table against table, emitting changes).

use crate::error::{Error, Result};
use crate::state::{StateCodec, StateReader, StateWriter};

/// One element of a two-input join: from the left input or from the right one.
#[derive(Debug, Clone, PartialEq)]
pub enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Which unmatched elements a join emits (with `None` for the missing side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only matched pairs.
    Inner,
    /// Matched pairs, and left elements that found no match.
    Left,
    /// Matched pairs, and right elements that found no match.
    Right,
    /// Matched pairs, and unmatched elements of either side.
    Full,
}

impl JoinKind {
    /// Reads a kind as pipeline files spell it: `inner`, `left`, `right`, `full` (or `full_outer`).
    pub fn parse(s: &str) -> Option<JoinKind> {
        match s {
            "inner" => Some(JoinKind::Inner),
            "left" => Some(JoinKind::Left),
            "right" => Some(JoinKind::Right),
            "full" | "full_outer" => Some(JoinKind::Full),
            _ => None,
        }
    }

    /// Whether left elements without a match are emitted.
    pub fn keeps_left(self) -> bool {
        matches!(self, JoinKind::Left | JoinKind::Full)
    }

    /// Whether right elements without a match are emitted.
    pub fn keeps_right(self) -> bool {
        matches!(self, JoinKind::Right | JoinKind::Full)
    }
}

/// So that a join's input can itself be buffered in state (by a custom operator upstream of a join, say).
impl<L: StateCodec, R: StateCodec> StateCodec for Either<L, R> {
    fn encode(&self, w: &mut StateWriter) {
        match self {
            Either::Left(l) => {
                w.u8(0);
                l.encode(w);
            }
            Either::Right(r) => {
                w.u8(1);
                r.encode(w);
            }
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => L::decode(r).map(Either::Left),
            1 => R::decode(r).map(Either::Right),
            t => Err(Error::CorruptState(format!("bad either tag {t}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(JoinKind::parse("inner"), Some(JoinKind::Inner));
        assert_eq!(JoinKind::parse("left"), Some(JoinKind::Left));
        assert_eq!(JoinKind::parse("right"), Some(JoinKind::Right));
        assert_eq!(JoinKind::parse("full"), Some(JoinKind::Full));
        assert_eq!(JoinKind::parse("full_outer"), Some(JoinKind::Full));
        assert_eq!(JoinKind::parse("outer"), None);
        assert_eq!(JoinKind::parse("Inner"), None);
        assert!(JoinKind::Full.keeps_left() && JoinKind::Full.keeps_right());
        assert!(!JoinKind::Inner.keeps_left() && !JoinKind::Inner.keeps_right());
        assert!(JoinKind::Left.keeps_left() && !JoinKind::Left.keeps_right());
    }

    #[test]
    fn either_round_trips() {
        let mut w = StateWriter::new();
        Either::<u64, String>::Left(7).encode(&mut w);
        Either::<u64, String>::Right("x".into()).encode(&mut w);
        let mut r = StateReader::new(&w.buf);
        assert_eq!(
            Either::<u64, String>::decode(&mut r).unwrap(),
            Either::Left(7)
        );
        assert_eq!(
            Either::<u64, String>::decode(&mut r).unwrap(),
            Either::Right("x".into())
        );
        assert!(r.is_empty());
        assert!(Either::<u64, u64>::decode(&mut StateReader::new(&[2, 0])).is_err());
    }
}
