//! A change set: what one operator instance (one operator in one key group) changed since the previous
//! checkpoint, as a checkpoint carries it to the store. Several change sets make up a checkpoint's changes;
//! they are applied in order, so a later one wins for a key.
//!
//! Layout (big-endian): prefix length u32, prefix, entry count u32, then per entry: key length u32, key,
//! value length u32 (`TOMBSTONE` for a deletion), value. A store key is the prefix followed by the key, and a
//! prefix names its operator and key group (see [`prefix`]), so no prefix is a prefix of another.

use super::run::TOMBSTONE;
use crate::error::{Error, Result};

/// The store prefix of an operator's state in one key group: the id's length (u16), the id, the group.
pub fn prefix(operator: &str, group: u16) -> Vec<u8> {
    let id = operator.as_bytes();
    let id = &id[..id.len().min(u16::MAX as usize)];
    let mut p = Vec::with_capacity(id.len() + 4);
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p.extend_from_slice(&group.to_be_bytes());
    p
}

/// Writes a value's bytes into a change set.
pub type WriteValue<'a> = &'a dyn Fn(&mut Vec<u8>);

/// Builds one change set.
#[derive(Debug)]
pub struct ChangeSet {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
}

impl ChangeSet {
    pub fn new(prefix: &[u8]) -> ChangeSet {
        let mut buf = Vec::with_capacity(prefix.len() + 8);
        buf.extend_from_slice(&(prefix.len() as u32).to_be_bytes());
        buf.extend_from_slice(prefix);
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_be_bytes());
        ChangeSet {
            buf,
            count_at,
            count: 0,
        }
    }

    /// Appends a put (`Some`) or a deletion (`None`); `value` writes the value's bytes.
    pub fn push(&mut self, key: &[u8], value: Option<WriteValue<'_>>) {
        self.buf
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(key);
        match value {
            None => self.buf.extend_from_slice(&TOMBSTONE.to_be_bytes()),
            Some(write) => {
                let at = self.buf.len();
                self.buf.extend_from_slice(&0u32.to_be_bytes());
                write(&mut self.buf);
                let len = (self.buf.len() - at - 4) as u32;
                self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        let at = self.count_at;
        self.buf[at..at + 4].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        return Err(Error::CorruptState("truncated state change set".into()));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn u32_of(b: &mut &[u8]) -> Result<u32> {
    let s = take(b, 4)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Calls `f(prefix, key, value)` for every entry of a change set (`None`: a deletion), checking every length.
pub fn decode<'a>(
    mut b: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8], Option<&'a [u8]>),
) -> Result<()> {
    let plen = u32_of(&mut b)? as usize;
    let prefix = take(&mut b, plen)?;
    let count = u32_of(&mut b)?;
    for _ in 0..count {
        let klen = u32_of(&mut b)? as usize;
        let key = take(&mut b, klen)?;
        let vlen = u32_of(&mut b)?;
        let value = if vlen == TOMBSTONE {
            None
        } else {
            Some(take(&mut b, vlen as usize)?)
        };
        f(prefix, key, value);
    }
    if !b.is_empty() {
        return Err(Error::CorruptState(
            "trailing bytes after a state change set".into(),
        ));
    }
    Ok(())
}

/// The prefix a change set is for.
pub fn prefix_of(b: &[u8]) -> Result<&[u8]> {
    let mut b = b;
    let plen = u32_of(&mut b)? as usize;
    take(&mut b, plen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let p = prefix("agg", 5);
        let mut c = ChangeSet::new(&p);
        c.push(b"k1", Some(&|b: &mut Vec<u8>| b.extend_from_slice(b"v1")));
        c.push(b"k2", None);
        let b = c.finish();
        let mut seen = Vec::new();
        decode(&b, |pr, k, v| {
            seen.push((pr.to_vec(), k.to_vec(), v.map(<[u8]>::to_vec)))
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (p.clone(), b"k1".to_vec(), Some(b"v1".to_vec())),
                (p.clone(), b"k2".to_vec(), None)
            ]
        );
        assert_eq!(prefix_of(&b).unwrap(), &p[..]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut], |_, _, _| ()).is_err());
        }
        assert_ne!(prefix("a", 1)[..3], prefix("ab", 1)[..3]);
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&b, |_, _, _| ());
        }
    }
}
