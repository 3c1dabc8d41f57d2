//! The zstd container of a bundle, walked frame by frame and block by block
//! (RFC 8878, section 3.1) in front of one reused libzstd decoder.
//!
//! It owns the framing rules of docs/FORMAT.md section 1: standard frames
//! only (no skippable frames, no trailing bytes), no frame that decodes to
//! nothing, no block that decodes to nothing but a frame's last, a capped
//! window, and, until the reader says the head is complete, at most
//! [`MAX_HEAD_FRAMES`] frames whose blocks lie within the first
//! [`MAX_HEAD_INPUT`] bytes, and everywhere at most [`FRAMING_ALLOWANCE`]
//! frames and blocks plus one per [`FRAMING_BYTES_PER_UNIT`] decoded.
//! Together they bound the work an unsigned (or reframed) file can cause,
//! before its signatures are checked and after: a few operations per input
//! byte, and no per-frame setup beyond a session reset (the decoder context
//! is created once, never per frame).
//!
//! [`scan_headers`] applies what of these the headers alone show, without
//! decoding, for callers that only need to know whether a file is complete.
//!
//! It must never hand out a byte libzstd has not decoded and checked, and
//! never read past a block it is about to refuse.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::{
    FRAMING_ALLOWANCE, FRAMING_BYTES_PER_UNIT, MAX_HEAD_FRAMES, MAX_HEAD_INPUT, MAX_WINDOW_LOG,
};

/// Little-endian magic number of a standard zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Largest block, decoded or not (RFC 8878 Block_Maximum_Size).
const MAX_BLOCK: usize = 128 << 10;
/// Decoded bytes held between reads: one block always fits, so a block is
/// completely flushed by the call that feeds its last byte.
const OUT_CAPACITY: usize = 2 * MAX_BLOCK;
/// Input buffer: few, large reads from the file.
const IN_CAPACITY: usize = 1 << 20;

/// A framing rule of docs/FORMAT.md section 1 is broken. Carried inside an
/// [`io::Error`] (kind `InvalidData`) so the bundle reader can word it as a
/// rejection rather than as damaged data.
#[derive(Debug)]
pub struct FramingError(pub String);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FramingError {}

fn framing(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, FramingError(msg))
}

fn damaged(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// The first bytes are not zstd at all: some other file, not a damaged
/// bundle (a [`FramingError`], so the reader reports it as it is).
fn not_a_bundle() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        FramingError(
            "not a gapferry bundle: the file does not start with zstd data (a bundle is the \
             .tar.zst gapferry export wrote, or the first volume or index of a split one)"
                .into(),
        ),
    )
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file ends inside a zstd frame",
    )
}

/// Where the walker is in the compressed stream.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Before a frame's magic number, or at the end of the input.
    Boundary,
    /// Before a block header.
    BlockHeader,
    /// Inside a block: `left` bytes of it still to feed.
    Block { left: usize, last: bool },
    /// The frame's content checksum: `left` bytes still to feed.
    Checksum { left: usize },
    /// The input ended cleanly at a frame boundary.
    Done,
}

/// Standard zstd frames, one after another, and nothing else, decoded with
/// one libzstd context.
pub struct Frames<R: Read> {
    input: BufReader<R>,
    dctx: Decoder<'static>,
    stage: Stage,
    out: Box<[u8]>,
    out_pos: usize,
    out_len: usize,
    /// Frames started so far (1-based number of the current frame).
    frames: u64,
    /// Compressed bytes taken from the input so far.
    consumed: u64,
    /// Frames plus blocks started so far, and bytes decoded so far: the
    /// framing budget.
    units: u64,
    decoded: u64,
    /// Whether the current frame ends with a content checksum.
    checksum: bool,
    block_output: u64,
    frame_output: u64,
    /// libzstd's hint after the last call: 0 when a frame is complete.
    hint: usize,
    /// The head limits apply until [`Frames::end_head`].
    in_head: bool,
    /// The head limits ([`MAX_HEAD_FRAMES`], [`MAX_HEAD_INPUT`]); fields so
    /// unit tests can exercise them on small inputs.
    max_head_frames: u64,
    max_head_input: u64,
}

impl<R: Read> fmt::Debug for Frames<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames")
            .field("stage", &self.stage)
            .field("frames", &self.frames)
            .field("consumed", &self.consumed)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Frames<R> {
    pub fn new(input: R) -> io::Result<Self> {
        let mut dctx = Decoder::new()?;
        dctx.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(MAX_WINDOW_LOG))?;
        Ok(Frames {
            input: BufReader::with_capacity(IN_CAPACITY, input),
            dctx,
            stage: Stage::Boundary,
            out: vec![0u8; OUT_CAPACITY].into_boxed_slice(),
            out_pos: 0,
            out_len: 0,
            frames: 0,
            consumed: 0,
            units: 0,
            decoded: 0,
            checksum: false,
            block_output: 0,
            frame_output: 0,
            hint: 0,
            in_head: true,
            max_head_frames: MAX_HEAD_FRAMES,
            max_head_input: MAX_HEAD_INPUT,
        })
    }

    /// The head (manifest and signatures) has been read: from here on only
    /// the rules that hold everywhere apply.
    pub fn end_head(&mut self) {
        self.in_head = false;
    }

    #[cfg(test)]
    fn with_head_limits(mut self, frames: u64, input: u64) -> Self {
        self.max_head_frames = frames;
        self.max_head_input = input;
        self
    }

    /// Refuses to take `len` more input bytes for the head past its budget.
    fn head_budget(&self, len: usize) -> io::Result<()> {
        if self.in_head && self.consumed + len as u64 > self.max_head_input {
            return Err(framing(format!(
                "the manifest and signatures do not end within the first {} bytes of the file \
                 (the head size limit: 17 MiB, docs/FORMAT.md section 1); \
                 not a bundle gapferry wrote: export it again",
                self.max_head_input
            )));
        }
        Ok(())
    }

    /// Counts one more frame or block against the framing budget: at most
    /// [`FRAMING_ALLOWANCE`] plus one per [`FRAMING_BYTES_PER_UNIT`] bytes
    /// decoded so far, so tiny frames and blocks cannot multiply the work
    /// per byte.
    fn count_unit(&mut self) -> io::Result<()> {
        let budget = FRAMING_ALLOWANCE + self.decoded / FRAMING_BYTES_PER_UNIT;
        if self.units + 1 > budget {
            return Err(framing(format!(
                "more zstd frames and blocks than the framing limit allows: {} after {} decoded bytes \
                 (at most {FRAMING_ALLOWANCE} plus one per {FRAMING_BYTES_PER_UNIT} bytes decoded, \
                 docs/FORMAT.md section 1); not a bundle gapferry wrote: export it again",
                self.units + 1,
                self.decoded
            )));
        }
        self.units += 1;
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes, or fewer only at the end of the input.
    fn read_upto(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Feeds header bytes the walker has parsed to the decoder (they decode
    /// to nothing).
    fn feed_header(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut inb = InBuffer::around(bytes);
        let mut empty: [u8; 0] = [];
        let mut outb = OutBuffer::around(&mut empty[..]);
        self.hint = self.dctx.run(&mut inb, &mut outb)?;
        if inb.pos() != bytes.len() {
            return Err(damaged("zstd decoder did not take a frame or block header"));
        }
        self.consumed += bytes.len() as u64;
        Ok(())
    }

    /// At a frame boundary: starts the next frame, or returns `false` at the
    /// clean end of the input.
    fn frame_start(&mut self) -> io::Result<bool> {
        let mut magic = [0u8; 4];
        let n = self.read_upto(&mut magic)?;
        if n == 0 {
            return Ok(false);
        }
        if n < 4 || magic != ZSTD_MAGIC {
            return Err(if self.frames == 0 {
                not_a_bundle()
            } else {
                damaged("data after a zstd frame is not a zstd frame (skippable frames and trailing bytes are not allowed)")
            });
        }
        let mut hdr = [0u8; 18];
        hdr[..4].copy_from_slice(&magic);
        if self.read_upto(&mut hdr[4..5])? < 1 {
            return Err(truncated());
        }
        let fhd = hdr[4];
        let single_segment = fhd & 0x20 != 0;
        let fcs_len = match fhd >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
        let rest = usize::from(!single_segment) + dict_len + fcs_len;
        let len = 5 + rest;
        if self.read_upto(&mut hdr[5..len])? < rest {
            return Err(truncated());
        }
        let number = self.frames + 1;
        if fcs_len > 0 {
            let mut fcs = [0u8; 8];
            fcs[..fcs_len].copy_from_slice(&hdr[len - fcs_len..len]);
            let mut size = u64::from_le_bytes(fcs);
            if fcs_len == 2 {
                size += 256;
            }
            if size == 0 {
                return Err(empty_frame(number));
            }
        }
        if self.in_head && number > self.max_head_frames {
            return Err(framing(format!(
                "the manifest and signatures do not end within the first {} zstd frames \
                 (the head frame limit, docs/FORMAT.md section 1); \
                 not a bundle gapferry wrote: export it again",
                self.max_head_frames
            )));
        }
        self.head_budget(len)?;
        self.count_unit()?;
        self.frames = number;
        self.dctx.reinit()?;
        self.feed_header(&hdr[..len])?;
        self.checksum = fhd & 0x04 != 0;
        self.frame_output = 0;
        self.stage = Stage::BlockHeader;
        Ok(true)
    }

    fn block_start(&mut self) -> io::Result<()> {
        let mut b = [0u8; 3];
        if self.read_upto(&mut b)? < 3 {
            return Err(truncated());
        }
        let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let last = h & 1 != 0;
        let size = (h >> 3) as usize;
        let content = match (h >> 1) & 3 {
            0 => size,
            1 => 1,
            2 => size,
            _ => return Err(damaged("zstd block of the reserved type")),
        };
        if size > MAX_BLOCK {
            return Err(damaged("zstd block larger than 128 KiB"));
        }
        // Raw and RLE blocks say what they decode to; a compressed block is
        // checked once decoded (block_end).
        if size == 0 && (h >> 1) & 3 != 2 && !last {
            return Err(empty_block(self.frames));
        }
        self.head_budget(3 + content)?;
        self.count_unit()?;
        self.feed_header(&b)?;
        self.block_output = 0;
        self.stage = Stage::Block {
            left: content,
            last,
        };
        Ok(())
    }

    /// A block was fed and flushed completely.
    fn block_end(&mut self, last: bool) -> io::Result<()> {
        if self.block_output == 0 && !last {
            return Err(empty_block(self.frames));
        }
        self.frame_output += self.block_output;
        if !last {
            self.stage = Stage::BlockHeader;
        } else if self.checksum {
            self.stage = Stage::Checksum { left: 4 };
        } else {
            self.frame_end()?;
        }
        Ok(())
    }

    fn frame_end(&mut self) -> io::Result<()> {
        if self.hint != 0 {
            return Err(damaged("a zstd frame does not end after its last block"));
        }
        if self.frame_output == 0 {
            return Err(empty_frame(self.frames));
        }
        self.stage = Stage::Boundary;
        Ok(())
    }

    /// Feeds up to `left` bytes of the current block or checksum to the
    /// decoder, decoding into the free part of `out`. Returns the bytes fed.
    fn feed(&mut self, left: usize) -> io::Result<usize> {
        let avail = self.input.fill_buf()?;
        if avail.is_empty() {
            return Err(truncated());
        }
        let take = avail.len().min(left);
        let mut inb = InBuffer::around(&avail[..take]);
        let mut outb = OutBuffer::around(&mut self.out[self.out_len..]);
        self.hint = self.dctx.run(&mut inb, &mut outb)?;
        let (read, wrote) = (inb.pos(), outb.pos());
        self.input.consume(read);
        self.consumed += read as u64;
        self.out_len += wrote;
        self.block_output += wrote as u64;
        self.decoded += wrote as u64;
        if read == 0 && wrote == 0 {
            return Err(damaged("zstd decoder made no progress"));
        }
        Ok(read)
    }

    /// Decodes until some output is ready or the input ended cleanly.
    fn fill(&mut self) -> io::Result<()> {
        self.out_pos = 0;
        self.out_len = 0;
        loop {
            match self.stage {
                Stage::Done => return Ok(()),
                Stage::Boundary => {
                    if !self.frame_start()? {
                        self.stage = Stage::Done;
                    }
                }
                Stage::BlockHeader => self.block_start()?,
                Stage::Block { left, last } => {
                    let left = if left > 0 { left - self.feed(left)? } else { 0 };
                    self.stage = Stage::Block { left, last };
                    if left == 0 {
                        // A block decodes to at most MAX_BLOCK bytes and `out`
                        // holds twice that: all of it is out by now.
                        debug_assert!(self.out_len < self.out.len());
                        self.block_end(last)?;
                    }
                    if self.out_len > 0 {
                        return Ok(());
                    }
                }
                Stage::Checksum { left } => {
                    let left = left - self.feed(left)?;
                    self.stage = Stage::Checksum { left };
                    if left == 0 {
                        self.frame_end()?;
                    }
                }
            }
        }
    }
}

fn empty_frame(number: u64) -> io::Error {
    framing(format!(
        "zstd frame {number} decodes to nothing (no empty frames, docs/FORMAT.md section 1); \
         not a bundle gapferry wrote: export it again"
    ))
}

fn empty_block(frame: u64) -> io::Error {
    framing(format!(
        "zstd frame {frame} has a block that decodes to nothing before its last block \
         (no empty blocks but a frame's last, docs/FORMAT.md section 1); \
         not a bundle gapferry wrote: export it again"
    ))
}

impl<R: Read> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out_pos == self.out_len {
            self.fill()?;
        }
        let n = (self.out_len - self.out_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// What a walk of frame and block headers found, without decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderScan {
    /// The file ends exactly where a frame ends.
    Complete,
    /// The file ends inside a frame: still being written, or truncated.
    Incomplete,
    /// Not standard zstd frames, or a framing rule broken that the headers
    /// alone show (empty frames or blocks, too many frames and blocks):
    /// the reader would reject it.
    Refused(String),
}

/// Walks the frame and block headers of `len` bytes of `input` (RFC 8878
/// section 3.1.1) without decoding, to tell a complete file from one still
/// being written (an inbox waits for the end of the last frame). Headers
/// are read through a small buffer and block contents skipped within it or
/// by seeking, so the walk costs a few operations per block, and the rules
/// the headers can show are applied as it goes: a flood of empty frames or
/// blocks is refused at the first, not walked to its end. Compressed blocks
/// are credited their largest decoded size, so only the reader's decoding
/// applies the framing budget exactly.
pub fn scan_headers<R: Read + io::Seek>(input: R, len: u64) -> io::Result<HeaderScan> {
    let mut r = BufReader::with_capacity(8 << 10, input);
    let mut pos = 0u64;
    let (mut units, mut credit) = (0u64, 0u64);
    let refused = |s: &str| Ok(HeaderScan::Refused(s.to_string()));
    if len == 0 {
        return Ok(HeaderScan::Incomplete);
    }
    while pos < len {
        if len - pos < 6 {
            // The start of a frame still being written, or trailing bytes.
            let mut head = vec![0u8; (len - pos) as usize];
            r.read_exact(&mut head)?;
            let n = head.len().min(4);
            return if head[..n] == ZSTD_MAGIC[..n] {
                Ok(HeaderScan::Incomplete)
            } else {
                refused("not a standard zstd frame")
            };
        }
        let mut hdr = [0u8; 18];
        r.read_exact(&mut hdr[..5])?;
        if hdr[..4] != ZSTD_MAGIC {
            return refused("not a standard zstd frame");
        }
        let fhd = hdr[4];
        let single_segment = fhd & 0x20 != 0;
        let fcs_len = match fhd >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let rest = usize::from(!single_segment) + [0usize, 1, 2, 4][usize::from(fhd & 3)] + fcs_len;
        if pos + 5 + rest as u64 > len {
            return Ok(HeaderScan::Incomplete);
        }
        r.read_exact(&mut hdr[5..5 + rest])?;
        if fcs_len > 0 && hdr[5 + rest - fcs_len..5 + rest].iter().all(|&b| b == 0) && fcs_len != 2
        {
            return refused("an empty zstd frame");
        }
        pos += 5 + rest as u64;
        units += 1;
        let mut frame_credit = 0u64;
        loop {
            if pos + 3 > len {
                return Ok(HeaderScan::Incomplete);
            }
            let mut b = [0u8; 3];
            r.read_exact(&mut b)?;
            pos += 3;
            let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
            let last = h & 1 != 0;
            let size = u64::from(h >> 3);
            let (content, decodes_to) = match (h >> 1) & 3 {
                0 => (size, size),
                1 => (1, size),
                2 => (size, MAX_BLOCK as u64),
                _ => return refused("a zstd block of the reserved type"),
            };
            if size > MAX_BLOCK as u64 {
                return refused("a zstd block larger than 128 KiB");
            }
            if decodes_to == 0 && !last {
                return refused("an empty zstd block before its frame's last");
            }
            units += 1;
            if units > FRAMING_ALLOWANCE + credit / FRAMING_BYTES_PER_UNIT {
                return refused("more zstd frames and blocks than the framing limit allows");
            }
            credit += decodes_to;
            frame_credit += decodes_to;
            if pos + content > len {
                return Ok(HeaderScan::Incomplete);
            }
            r.seek_relative(content as i64)?;
            pos += content;
            if last {
                break;
            }
        }
        if frame_credit == 0 {
            return refused("an empty zstd frame");
        }
        if fhd & 0x04 != 0 {
            if pos + 4 > len {
                return Ok(HeaderScan::Incomplete);
            }
            r.seek_relative(4)?;
            pos += 4;
        }
    }
    Ok(HeaderScan::Complete)
}

/// Reads one whole standard zstd frame from `input` without decoding it:
/// its header, blocks and checksum, at most `max` bytes. `None` when the
/// input ends before a frame starts. A frame longer than `max` is an
/// [`io::ErrorKind::InvalidInput`] error; a skippable frame, a reserved
/// block type or a block over 128 KiB is [`io::ErrorKind::InvalidData`]; an
/// input that ends inside the frame
/// is [`io::ErrorKind::UnexpectedEof`]. Used to rewrite a bundle's head frame
/// and copy the frames after it untouched (`gapferry sign`, `attach`).
pub fn read_frame<R: Read + ?Sized>(input: &mut R, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut frame = vec![0u8; 5];
    let mut got = 0;
    while got < 5 {
        match input.read(&mut frame[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(truncated()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if frame[..4] != ZSTD_MAGIC {
        return Err(damaged("not a standard zstd frame"));
    }
    let take = |input: &mut R, frame: &mut Vec<u8>, n: usize| -> io::Result<()> {
        if frame.len() as u64 + n as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("zstd frame longer than {max} bytes"),
            ));
        }
        let at = frame.len();
        frame.resize(at + n, 0);
        input.read_exact(&mut frame[at..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                truncated()
            } else {
                e
            }
        })
    };
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let rest = usize::from(!single_segment) + [0usize, 1, 2, 4][usize::from(fhd & 3)] + fcs_len;
    take(input, &mut frame, rest)?;
    loop {
        take(input, &mut frame, 3)?;
        let b = &frame[frame.len() - 3..];
        let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let size = (h >> 3) as usize;
        let content = match (h >> 1) & 3 {
            0 | 2 => size,
            1 => 1,
            _ => return Err(damaged("a zstd block of the reserved type")),
        };
        if size > MAX_BLOCK {
            return Err(damaged("a zstd block larger than 128 KiB"));
        }
        take(input, &mut frame, content)?;
        if h & 1 != 0 {
            break;
        }
    }
    if fhd & 0x04 != 0 {
        take(input, &mut frame, 4)?;
    }
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Frames::new(bytes)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn framing_msg(e: io::Error) -> String {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<FramingError>())
            .unwrap_or_else(|| panic!("not a framing error: {e}"))
            .0
            .clone()
    }

    /// One frame of raw blocks holding `blocks` (no content size, window
    /// 128 KiB, no checksum).
    fn raw_frame(blocks: &[&[u8]]) -> Vec<u8> {
        let mut out = ZSTD_MAGIC.to_vec();
        out.extend_from_slice(&[0x00, 7 << 3]);
        for (i, b) in blocks.iter().enumerate() {
            let h = u32::from(i + 1 == blocks.len()) | (b.len() as u32) << 3;
            out.extend_from_slice(&h.to_le_bytes()[..3]);
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn concatenated_frames_decode_and_skippable_frames_do_not() {
        let a = zstd::encode_all(&b"hello "[..], 1).unwrap();
        let b = zstd::encode_all(&b"world"[..], 1).unwrap();
        let mut both = a.clone();
        both.extend_from_slice(&b);
        assert_eq!(decode(&both).unwrap(), b"hello world");
        let mut skippable = a.clone();
        skippable.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        let e = decode(&skippable).unwrap_err();
        assert!(e.to_string().contains("skippable"), "{e}");
        let mut garbage = a;
        garbage.push(0);
        assert!(decode(&garbage)
            .unwrap_err()
            .to_string()
            .contains("not a zstd frame"));
    }

    #[test]
    fn checksummed_multi_block_frames_decode() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        io::Write::write_all(&mut enc, &data).unwrap();
        let mut z = enc.finish().unwrap();
        z.extend(zstd::encode_all(&b"tail"[..], 1).unwrap());
        let mut want = data.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(decode(&z).unwrap(), want);
        // A flipped checksum byte is damage, not a framing rule.
        let at = z.len() - zstd::encode_all(&b"tail"[..], 1).unwrap().len() - 1;
        z[at] ^= 1;
        let e = decode(&z).unwrap_err();
        assert!(e
            .get_ref()
            .unwrap()
            .downcast_ref::<FramingError>()
            .is_none());
    }

    #[test]
    fn empty_frames_and_blocks_are_refused() {
        // The 9-byte empty frame: single segment, content size 0, one empty
        // last raw block.
        let empty = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];
        assert!(framing_msg(decode(&empty).unwrap_err()).contains("frame 1 decodes to nothing"));
        // Without a content size: refused once its only block is decoded.
        let empty = raw_frame(&[b""]);
        assert!(framing_msg(decode(&empty).unwrap_err()).contains("frame 1 decodes to nothing"));
        let good = raw_frame(&[b"data"]);
        let e = decode(&[&good[..], &empty[..]].concat()).unwrap_err();
        assert!(framing_msg(e).contains("frame 2 decodes to nothing"));
        // An empty block before the last one.
        let e = decode(&raw_frame(&[b"a", b"", b"b"])).unwrap_err();
        assert!(framing_msg(e).contains("block that decodes to nothing"));
        // An empty last block after data is how libzstd ends some frames.
        assert_eq!(decode(&raw_frame(&[b"ab", b""])).unwrap(), b"ab");
        // A compressed block that decodes to nothing (raw literals header
        // of size 0, no sequences), before the last block.
        let mut f = ZSTD_MAGIC.to_vec();
        f.extend_from_slice(&[0x00, 7 << 3]);
        let h: u32 = 2 << 1 | 2 << 3;
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.extend_from_slice(&[0x00, 0x00]);
        let h: u32 = 1 | 1 << 3;
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.push(b'x');
        let e = decode(&f).unwrap_err();
        assert!(framing_msg(e).contains("block that decodes to nothing"));
    }

    #[test]
    fn head_limits_at_and_past_the_limit() {
        // Three frames of 4 + 2 + 3 + 1 = 10 bytes each.
        let frame = raw_frame(&[b"x"]);
        assert_eq!(frame.len(), 10);
        let three = frame.repeat(3);
        let read = |frames: u64, input: u64| {
            let mut out = Vec::new();
            Frames::new(&three[..])
                .unwrap()
                .with_head_limits(frames, input)
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert_eq!(read(3, 30).unwrap(), b"xxx");
        let e = framing_msg(read(2, 30).unwrap_err());
        assert!(e.contains("first 2 zstd frames"), "{e}");
        let e = framing_msg(read(3, 29).unwrap_err());
        assert!(e.contains("first 29 bytes"), "{e}");
        // After the head, neither limit applies.
        let mut f = Frames::new(&three[..]).unwrap().with_head_limits(1, 10);
        let mut one = [0u8; 1];
        f.read_exact(&mut one).unwrap();
        f.end_head();
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"xx");
    }

    fn scan(bytes: &[u8]) -> HeaderScan {
        scan_headers(io::Cursor::new(bytes), bytes.len() as u64).unwrap()
    }

    #[test]
    fn header_scan_tells_complete_from_cut_and_refuses_floods() {
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.include_checksum(true).unwrap();
        io::Write::write_all(&mut enc, &data).unwrap();
        let z = [enc.finish().unwrap(), raw_frame(&[&data[..1000]])].concat();
        assert_eq!(scan(&z), HeaderScan::Complete);
        for cut in [z.len() - 1, z.len() - 1003, z.len() / 2, 7, 0] {
            assert_eq!(scan(&z[..cut]), HeaderScan::Incomplete, "cut {cut}");
        }
        assert!(matches!(scan(b"not zstd at all"), HeaderScan::Refused(_)));
        assert!(matches!(
            scan(&[&z[..], b"garbage after"].concat()),
            HeaderScan::Refused(_)
        ));
        assert!(matches!(
            scan(&[&z[..], b"ga"].concat()),
            HeaderScan::Refused(_)
        ));
        assert_eq!(
            scan(&[&z[..], &ZSTD_MAGIC[..3]].concat()),
            HeaderScan::Incomplete
        );
        // Floods are refused at their first frame or block, structurally:
        // the walk reads from the cursor no further than its buffer.
        let empty = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];
        for flood in [
            empty.repeat(1_000_000),
            raw_frame(&[b""]).repeat(1_000_000),
            [&raw_frame(&[b"x"])[..6], &[0, 0, 0].repeat(11_000_000)[..]].concat(),
        ] {
            let mut c = io::Cursor::new(&flood[..]);
            let got = scan_headers(&mut c, flood.len() as u64).unwrap();
            assert!(
                matches!(got, HeaderScan::Refused(ref s) if s.contains("empty")),
                "{got:?}"
            );
            assert!(c.position() <= 8 << 10, "read {}", c.position());
        }
        // 1-byte frames: refused by the framing budget.
        let tiny = raw_frame(&[b"x"]).repeat(40_000);
        assert!(matches!(scan(&tiny), HeaderScan::Refused(ref s) if s.contains("framing limit")));
        assert_eq!(scan(&tiny[..30_000 * 10]), HeaderScan::Complete);
    }

    #[test]
    fn a_million_empty_frames_stop_at_the_first() {
        let empty = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00];
        let input = empty.repeat(1_000_000);
        let mut f = Frames::new(&input[..]).unwrap();
        let e = f.read(&mut [0u8; 16]).unwrap_err();
        assert!(framing_msg(e).contains("frame 1 decodes to nothing"));
        // Nothing past the first frame was taken from the input.
        assert_eq!(f.consumed, 0);
    }

    #[test]
    fn read_frame_returns_each_frame_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        io::Write::write_all(&mut enc, &data).unwrap();
        let a = enc.finish().unwrap();
        let b = raw_frame(&[b"tail", b""]);
        let both = [&a[..], &b[..]].concat();
        let mut r = &both[..];
        assert_eq!(read_frame(&mut r, 1 << 20).unwrap().unwrap(), a);
        assert_eq!(read_frame(&mut r, 1 << 20).unwrap().unwrap(), b);
        assert!(read_frame(&mut r, 1 << 20).unwrap().is_none());
        // Cut, too long, or not zstd.
        let e = read_frame(&mut &both[..a.len() - 1], 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = read_frame(&mut &both[..], 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(read_frame(&mut &b"not zstd"[..], 100).is_err());
    }
}
