//! Compressed writers the kernel can unpack: zstd, xz, gzip, or none.
//!
//! All three compress on several threads. gzip is made as pigz makes it: 1 MiB blocks deflated in
//! parallel (zlib-rs, flate2's `zlib-rs` backend, about 2.5 times faster than GNU gzip at the same
//! level), each primed with the 32 KiB before it and ended with a sync flush, joined into one deflate
//! stream in one gzip member: the plain gzip format the kernel reads. xz uses CRC32 checks: the kernel's xz decoder cannot verify
//! CRC64 or SHA-256 and refuses such archives. xz runs no more threads than fit in a quarter of the RAM, as
//! xz(1) does (about 94 MiB each).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

/// The initramfs's compression: `--compression`, `compression` in system.toml, the manifest.
#[derive(
    clap::ValueEnum, serde::Deserialize, serde::Serialize, Clone, Copy, Debug, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
    Gzip,
    None,
}

impl Compression {
    /// The name users write (`--compression`, system.toml) and tools are called by.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}

/// zstd level 3, zstd(1)'s default: the archive is read from the stick on every boot and sent on every
/// deploy, so it must be no bigger than `zstd -T0` makes it.
const ZSTD_LEVEL: i32 = 3;
/// Each zstd worker compresses jobs of this size. zstd's own choice at level 3 is 8 MiB, and its workers'
/// buffers grow with it: on the bench's trees (kernel modules decompressed, and as packaged), 2 MiB jobs
/// make the archive 0.7% bigger, take no more time, and keep the packer at 31 and 45 MiB instead of 66 and
/// 70 (measured by hand with the bench's packer child; the bench reports the result against `zstd -T0`).
const ZSTD_JOB_SIZE: u32 = 2 << 20;
/// xz preset: 6 is xz's default.
const XZ_PRESET: u32 = 6;

/// A writer that compresses into `W`; call [`Compressor::finish`] to end the stream.
pub struct Compressor<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(xz2::write::XzEncoder<W>),
    Gzip(ParallelGzip<W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    pub fn new(format: Compression, out: W) -> io::Result<Compressor<W>> {
        let threads = threads();
        let inner = match format {
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                enc.multithread(threads)?;
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                Inner::Zstd(enc)
            }
            Compression::Xz => {
                let stream = xz_builder(threads).encoder().map_err(io::Error::other)?;
                Inner::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
            Compression::Gzip => Inner::Gzip(ParallelGzip::new(out, threads as usize)?),
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

/// Input bytes per gzip block.
const GZIP_BLOCK: usize = 1 << 20;
/// Deflate's window: each block starts with the previous block's last 32 KiB as its dictionary.
const GZIP_WINDOW: usize = 32 << 10;

/// One gzip member deflated in blocks on up to `threads` threads; output in input order.
struct ParallelGzip<W: Write> {
    out: W,
    threads: usize,
    block: Vec<u8>,
    /// The last [`GZIP_WINDOW`] bytes before `block`.
    window: Vec<u8>,
    crc: flate2::Crc,
    in_flight: VecDeque<JoinHandle<io::Result<Vec<u8>>>>,
}

impl<W: Write> ParallelGzip<W> {
    fn new(mut out: W, threads: usize) -> io::Result<ParallelGzip<W>> {
        // Magic, deflate, no flags, no mtime (reproducible), no extra flags, OS Unix.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])?;
        Ok(ParallelGzip {
            out,
            threads: threads.max(1),
            block: Vec::with_capacity(GZIP_BLOCK),
            window: Vec::new(),
            crc: flate2::Crc::new(),
            in_flight: VecDeque::new(),
        })
    }

    /// Hands the current block to a thread, after writing out the oldest when all threads are busy.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight.len() >= self.threads {
            self.write_oldest()?;
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(GZIP_BLOCK));
        let window = std::mem::take(&mut self.window);
        let start = block.len().saturating_sub(GZIP_WINDOW);
        self.window = if block.len() >= GZIP_WINDOW {
            block[start..].to_vec()
        } else {
            // A short block (only ever the last one) still gets the window in front of it.
            let mut w = window.clone();
            w.extend_from_slice(&block);
            w.split_off(w.len().saturating_sub(GZIP_WINDOW))
        };
        let handle = std::thread::Builder::new()
            .name("gzip".into())
            .spawn(move || deflate_block(&window, &block, last))?;
        self.in_flight.push_back(handle);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(handle) = self.in_flight.pop_front() {
            let deflated = handle
                .join()
                .map_err(|_| io::Error::other("a gzip thread panicked"))??;
            self.out.write_all(&deflated)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(GZIP_BLOCK - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        if self.block.len() == GZIP_BLOCK {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Raw deflate of `data` primed with `window`: ended with a sync flush (byte-aligned, not final) so the
/// next block can follow, or as the final block when `last`.
fn deflate_block(window: &[u8], data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{FlushCompress, Status};
    let mut z = flate2::Compress::new(flate2::Compression::default(), false);
    if !window.is_empty() {
        z.set_dictionary(window).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let consumed = z.total_in() as usize;
        let status = z
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = z.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // With room left in `out`, the flush is complete.
            _ if !last && all_in && out.len() < out.capacity() => return Ok(out),
            _ => {}
        }
    }
}

/// The xz encoder as [`Compressor::new`] sets it up, on at most `threads` threads.
fn xz_builder(threads: u32) -> xz2::stream::MtStreamBuilder {
    let mut builder = xz2::stream::MtStreamBuilder::new();
    builder.preset(XZ_PRESET).check(xz2::stream::Check::Crc32);
    let threads = xz_threads(threads, physical_memory() / 4, |n| {
        builder.threads(n).memusage()
    });
    builder.threads(threads);
    builder
}

/// What liblzma says the xz encoder of [`Compressor::new`] needs, in bytes (as `xz -vv` reports it).
pub fn xz_memory() -> u64 {
    xz_builder(threads()).memusage()
}

/// Compressor threads: every CPU this process may use.
fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// xz's encoder needs about 94 MiB a thread at preset 6, so, as xz(1) does, use no more threads than fit in
/// `limit` bytes (`usage` says what N threads need); at least one.
fn xz_threads(most: u32, limit: u64, mut usage: impl FnMut(u32) -> u64) -> u32 {
    (2..=most).rev().find(|&n| usage(n) <= limit).unwrap_or(1)
}

/// This machine's RAM in bytes (0 when unknown, which leaves xz one thread).
fn physical_memory() -> u64 {
    let info = rustix::system::sysinfo();
    info.totalram.saturating_mul(u64::from(info.mem_unit))
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
    fn xz_threads_fit_in_a_quarter_of_the_memory() {
        let per_thread = |n: u32| u64::from(n) * 100;
        assert_eq!(xz_threads(8, 350, per_thread), 3);
        assert_eq!(xz_threads(2, 1000, per_thread), 2);
        assert_eq!(xz_threads(8, 50, per_thread), 1);
        assert_eq!(xz_threads(1, 1000, per_thread), 1);
        // liblzma's own estimate grows with the threads, so the search means something.
        let mut builder = xz2::stream::MtStreamBuilder::new();
        builder.preset(XZ_PRESET);
        let one = builder.threads(1).memusage();
        assert!(builder.threads(2).memusage() > one + (64 << 20), "{one}");
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
    fn gzip_is_one_member_gnu_gzip_reads() {
        // Blocks that compress well and blocks that do not, and a short last block.
        let mut data: Vec<u8> = (0..5 * GZIP_BLOCK as u32 + 12_345)
            .map(|i| {
                if (i / 300_000) % 2 == 0 {
                    (i % 7) as u8
                } else {
                    (i.wrapping_mul(2_654_435_761) >> 13) as u8
                }
            })
            .collect();
        data.extend_from_slice(b"the end");
        let mut c = Compressor::new(Compression::Gzip, Vec::new()).unwrap();
        for piece in data.chunks(100_000) {
            c.write_all(piece).unwrap();
        }
        let packed = c.finish().unwrap();
        let sh = xshell::Shell::new().unwrap();
        let unpacked = xshell::cmd!(sh, "gzip -dc")
            .stdin(&packed)
            .output()
            .unwrap();
        assert_eq!(unpacked.stdout, data);
        // One member: a single-member decoder reads it all, and nothing follows.
        let mut d = flate2::read::GzDecoder::new(&packed[..]);
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        // Empty input is a valid gzip file too.
        let empty = Compressor::new(Compression::Gzip, Vec::new())
            .unwrap()
            .finish()
            .unwrap();
        let unpacked = xshell::cmd!(sh, "gzip -dc").stdin(empty).output().unwrap();
        assert!(unpacked.stdout.is_empty());
    }

    #[test]
    fn none_is_identity() {
        round_trip(Compression::None, |b| b.to_vec());
    }
}
