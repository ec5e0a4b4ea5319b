//! Decompressing and compressing record sections, for the places that must look inside batches (the time index
//! on exact record timestamps, compaction, the stream processor, the benchmark client). The broker never
//! re-compresses what producers send.
//!
//! Formats as Kafka clients write them: gzip streams; snappy either raw or in the xerial framing the Java client
//! uses (magic `\x82SNAPPY\0`, then length-prefixed raw blocks); LZ4 frames; zstd frames.

use std::io::Read;

use bytes::Bytes;

use super::batch::Compression;
use crate::error::{Error, Result};

/// Decompressed output may not exceed this many bytes (a batch is at most `message.max.bytes`, but a compressed
/// one can expand a lot; this bounds what a hostile batch can make us allocate).
pub const MAX_DECOMPRESSED: usize = 256 * 1024 * 1024;

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn read_bounded(mut r: impl Read) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.by_ref()
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Error::CorruptBatch("cannot decompress records"))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(Error::CorruptBatch("decompressed records too large"));
    }
    Ok(out)
}

fn snappy_raw(input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let len =
        snap::raw::decompress_len(input).map_err(|_| Error::CorruptBatch("bad snappy block"))?;
    if out.len() + len > MAX_DECOMPRESSED {
        return Err(Error::CorruptBatch("decompressed records too large"));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(input, &mut out[start..])
        .map_err(|_| Error::CorruptBatch("bad snappy block"))?;
    Ok(())
}

/// Decompresses a batch's record section.
pub fn decompress(codec: Compression, input: &[u8]) -> Result<Bytes> {
    let out = match codec {
        Compression::None => return Ok(Bytes::copy_from_slice(input)),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(input))?,
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(input))?,
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::new(input)
                .map_err(|_| Error::CorruptBatch("bad zstd frame"))?;
            read_bounded(d)?
        }
        Compression::Snappy => {
            let mut out = Vec::new();
            if let Some(mut rest) = input.strip_prefix(XERIAL_MAGIC) {
                // 8 bytes of version information follow the magic.
                rest = rest
                    .get(8..)
                    .ok_or(Error::CorruptBatch("bad xerial snappy header"))?;
                while !rest.is_empty() {
                    let len_bytes: [u8; 4] = rest
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or(Error::CorruptBatch("bad xerial snappy block"))?;
                    let len = u32::from_be_bytes(len_bytes) as usize;
                    let block = rest
                        .get(4..4 + len)
                        .ok_or(Error::CorruptBatch("bad xerial snappy block"))?;
                    snappy_raw(block, &mut out)?;
                    rest = &rest[4 + len..];
                }
            } else {
                snappy_raw(input, &mut out)?;
            }
            out
        }
    };
    Ok(Bytes::from(out))
}

/// Compresses a record section (used by our own producers: the benchmark client and tests).
pub fn compress(codec: Compression, input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let fail = |_| Error::CorruptBatch("compression failed");
    Ok(match codec {
        Compression::None => input.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(input).map_err(fail)?;
            e.finish().map_err(fail)?
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .map_err(|_| Error::CorruptBatch("compression failed"))?,
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(input).map_err(fail)?;
            e.finish()
                .map_err(|_| Error::CorruptBatch("compression failed"))?
        }
        Compression::Zstd => zstd::bulk::compress(input, 1).map_err(fail)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let c = compress(codec, &data).unwrap();
            assert_eq!(&decompress(codec, &c).unwrap()[..], &data[..], "{codec:?}");
        }
    }

    #[test]
    fn xerial_snappy_is_read() {
        let data = b"hello hello hello hello".repeat(10);
        let block = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(
            &decompress(Compression::Snappy, &framed).unwrap()[..],
            &data[..]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                decompress(codec, b"\x82SNAPPY\x00garbage-garbage").is_err(),
                "{codec:?}"
            );
        }
    }
}
