//! Framing: every Kafka frame is a 4-byte big-endian size, then that many bytes.
//!
//! Checking for a whole frame is separate from parsing it: "not enough bytes yet" is the normal state of a
//! receive buffer, not an error.

/// What the receive buffer holds at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// More bytes are needed; the value is how many in total (size prefix included) when known.
    Incomplete(Option<usize>),
    /// A whole frame of `body_len` bytes follows the 4-byte prefix.
    Complete { body_len: usize },
    /// The declared size is negative or above `max`: the peer must be disconnected before anything is allocated.
    TooLarge { declared: i64 },
}

/// Checks whether `buf` starts with a whole frame no larger than `max` bytes.
pub fn check_frame(buf: &[u8], max: usize) -> FrameCheck {
    let Some(prefix) = buf.get(..4) else {
        return FrameCheck::Incomplete(None);
    };
    let declared = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if declared < 0 || declared as usize > max {
        return FrameCheck::TooLarge {
            declared: i64::from(declared),
        };
    }
    let body_len = declared as usize;
    if buf.len() - 4 < body_len {
        FrameCheck::Incomplete(Some(body_len + 4))
    } else {
        FrameCheck::Complete { body_len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(check_frame(&[0, 0], 100), FrameCheck::Incomplete(None));
        assert_eq!(
            check_frame(&[0, 0, 0, 3, 1], 100),
            FrameCheck::Incomplete(Some(7))
        );
        assert_eq!(
            check_frame(&[0, 0, 0, 1, 1, 9], 100),
            FrameCheck::Complete { body_len: 1 }
        );
        assert_eq!(
            check_frame(&[0, 0, 1, 0], 100),
            FrameCheck::TooLarge { declared: 256 }
        );
        assert_eq!(
            check_frame(&[0xff, 0xff, 0xff, 0xff], 100),
            FrameCheck::TooLarge { declared: -1 }
        );
    }
}
