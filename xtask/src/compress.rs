//! Compressed writers the kernel can unpack: zstd, xz, gzip, or none.
//!
//! zstd and xz compress on several threads. xz uses CRC32 checks: the kernel's xz decoder cannot verify
//! CRC64 or SHA-256 and refuses such archives.

use std::io::{self, Write};

use crate::flags::Compression;

/// zstd level: 3 is zstd's default, fast to pack and to unpack at boot.
const ZSTD_LEVEL: i32 = 3;
/// xz preset: 6 is xz's default.
const XZ_PRESET: u32 = 6;

/// A writer that compresses into `W`; call [`Compressor::finish`] to end the stream.
pub struct Compressor<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(xz2::write::XzEncoder<W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    pub fn new(format: Compression, out: W) -> io::Result<Compressor<W>> {
        let threads = threads();
        let inner = match format {
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                enc.multithread(threads)?;
                Inner::Zstd(enc)
            }
            Compression::Xz => {
                let stream = xz2::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(XZ_PRESET)
                    .check(xz2::stream::Check::Crc32)
                    .encoder()
                    .map_err(io::Error::other)?;
                Inner::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
            Compression::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::None => Inner::None(out),
        };
        Ok(Compressor { inner })
    }

    /// Ends the compressed stream and returns the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::Zstd(enc) => enc.finish(),
            Inner::Xz(enc) => enc.finish(),
            Inner::Gzip(enc) => enc.finish(),
            Inner::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Zstd(w) => w.write(buf),
            Inner::Xz(w) => w.write(buf),
            Inner::Gzip(w) => w.write(buf),
            Inner::None(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            Inner::Zstd(w) => w.write_all(buf),
            Inner::Xz(w) => w.write_all(buf),
            Inner::Gzip(w) => w.write_all(buf),
            Inner::None(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Zstd(w) => w.flush(),
            Inner::Xz(w) => w.flush(),
            Inner::Gzip(w) => w.flush(),
            Inner::None(w) => w.flush(),
        }
    }
}

/// Compressor threads: every CPU this process may use.
fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(format: Compression, decode: impl Fn(&[u8]) -> Vec<u8>) {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut c = Compressor::new(format, Vec::new()).unwrap();
        c.write_all(&data).unwrap();
        let packed = c.finish().unwrap();
        assert_eq!(decode(&packed), data);
    }

    #[test]
    fn zstd_round_trip() {
        round_trip(Compression::Zstd, |b| zstd::decode_all(b).unwrap());
    }

    #[test]
    fn xz_round_trip_with_crc32() {
        round_trip(Compression::Xz, |b| {
            // Stream flags (bytes 6..8 of the header): check type 1 = CRC32.
            assert_eq!(&b[..6], b"\xfd7zXZ\0");
            assert_eq!(b[7] & 0x0f, 0x01, "xz check must be CRC32 for the kernel");
            let mut out = Vec::new();
            xz2::read::XzDecoder::new(b).read_to_end(&mut out).unwrap();
            out
        });
    }

    #[test]
    fn gzip_round_trip() {
        round_trip(Compression::Gzip, |b| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(b)
                .read_to_end(&mut out)
                .unwrap();
            out
        });
    }

    #[test]
    fn none_is_identity() {
        round_trip(Compression::None, |b| b.to_vec());
    }
}
