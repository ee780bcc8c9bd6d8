//! Content-defined chunking with FastCDC (2020), streaming over a reader with one reusable
//! buffer per worker.
//!
//! The gear table is XORed with the repository's secret seed, so where chunks are cut does
//! not reveal content to someone who only sees chunk sizes.

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};

use crate::repo::format::ChunkerParams;

pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    pub fn new(p: &ChunkerParams) -> Chunker {
        let (mask_s, mask_l) = select_masks(p.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(p.seed);
        Chunker {
            min: p.min_size as usize,
            avg: p.avg_size as usize,
            max: p.max_size as usize,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Reads `src` to its end and calls `emit` with each chunk, in order. `buf` is scratch
    /// space reused across calls (it grows to twice the maximum chunk size; each refill asks
    /// for as much as fits, but stops asking once one maximum chunk is in hand). Returns the
    /// number of bytes read.
    ///
    /// Where a chunk ends depends only on the bytes from its start (the hash restarts at
    /// each chunk), so reading that starts at a chunk boundary of an earlier read yields the
    /// same chunks from there on: that is how a backup continues inside a file.
    pub fn chunk<R: Read>(
        &self,
        src: &mut R,
        buf: &mut Vec<u8>,
        mut emit: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let cap = (self.max * 2).max(1 << 20);
        if buf.len() < cap {
            buf.resize(cap, 0);
        }
        let mut start = 0; // first unconsumed byte
        let mut end = 0; // end of valid data
        let mut eof = false;
        let mut total = 0u64;
        loop {
            // Keep at least one maximum-size chunk of lookahead unless the input ended, and
            // read no further than needed for that: a reader that hands out little at a
            // time (the backup's gate) is never asked for more than one chunk ahead.
            if !eof && end - start < self.max {
                if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                while end < self.max {
                    match src.read(&mut buf[end..cap]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => {
                            end += n;
                            total += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if start == end {
                return Ok(total);
            }
            let data = &buf[start..end];
            let cut = if data.len() <= self.min {
                data.len()
            } else {
                let (_, cut) = cut_gear(
                    data,
                    self.min,
                    self.avg,
                    self.max,
                    self.mask_s,
                    self.mask_l,
                    self.mask_s << 1,
                    self.mask_l << 1,
                    &self.gear,
                    &self.gear_ls,
                );
                cut
            };
            emit(&data[..cut])?;
            start += cut;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChunkerParams {
        ChunkerParams { min_size: 16 << 10, avg_size: 64 << 10, max_size: 256 << 10, seed: 42 }
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks_of(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let n = c
            .chunk(&mut &data[..], &mut buf, |ch| {
                out.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n as usize, data.len());
        out
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let c = Chunker::new(&params());
        let data = pseudo_random(3 << 20, 7);
        let chunks = chunks_of(&c, &data);
        assert_eq!(chunks.concat(), data);
        for ch in &chunks[..chunks.len() - 1] {
            assert!(ch.len() >= 16 << 10 && ch.len() <= 256 << 10, "{}", ch.len());
        }
        assert!(chunks.len() > 20, "average near 64 KiB: {} chunks", chunks.len());
        assert!(chunks_of(&c, &[]).is_empty());
    }

    #[test]
    fn a_local_edit_changes_few_chunks() {
        let c = Chunker::new(&params());
        let data = pseudo_random(4 << 20, 9);
        let mut edited = data.clone();
        edited[2 << 20] ^= 0xFF;
        let a = chunks_of(&c, &data);
        let b = chunks_of(&c, &edited);
        let differing = b.iter().filter(|ch| !a.contains(ch)).count();
        assert!(differing <= 2, "{differing} chunks changed");
        // An insertion shifts content but boundaries resynchronise.
        let mut inserted = data.clone();
        inserted.insert(1 << 20, 0x42);
        let b = chunks_of(&c, &inserted);
        let differing = b.iter().filter(|ch| !a.contains(ch)).count();
        assert!(differing <= 3, "{differing} chunks changed after an insertion");
    }

    #[test]
    fn chunking_restarted_at_a_boundary_gives_the_same_chunks() {
        let c = Chunker::new(&params());
        let data = pseudo_random(5 << 20, 13);
        let whole = chunks_of(&c, &data);
        assert!(whole.len() > 30, "{} chunks", whole.len());
        for k in [1, 7, whole.len() / 2, whole.len() - 2, whole.len() - 1] {
            let offset: usize = whole[..k].iter().map(Vec::len).sum();
            let rest = chunks_of(&c, &data[offset..]);
            assert_eq!(rest, whole[k..], "restarted after chunk {k} (byte {offset})");
        }
        // Not at a boundary: the first chunks differ, so the test above can tell.
        let offset = whole[0].len() + 1;
        assert_ne!(chunks_of(&c, &data[offset..])[0], whole[1]);
    }

    /// The backup's gate relies on this: whenever the chunker asks for more input, it holds
    /// less than one maximum chunk that it has not emitted yet.
    #[test]
    fn it_reads_only_while_it_holds_less_than_one_maximum_chunk() {
        struct Trickle<'a> {
            data: &'a [u8],
            given: std::rc::Rc<std::cell::Cell<usize>>,
            emitted: std::rc::Rc<std::cell::Cell<usize>>,
            most_held: usize,
        }
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.most_held = self.most_held.max(self.given.get() - self.emitted.get());
                let n = buf.len().min(self.data.len()).min(100_000);
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                self.given.set(self.given.get() + n);
                Ok(n)
            }
        }
        let c = Chunker::new(&params());
        let data = pseudo_random(6 << 20, 17);
        let emitted = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut src =
            Trickle { data: &data, given: Default::default(), emitted: emitted.clone(), most_held: 0 };
        let mut buf = Vec::new();
        let mut chunks = Vec::new();
        c.chunk(&mut src, &mut buf, |ch| {
            emitted.set(emitted.get() + ch.len());
            chunks.push(ch.to_vec());
            Ok(())
        })
        .unwrap();
        assert!(src.most_held < 256 << 10, "asked for more while holding {} bytes", src.most_held);
        assert_eq!(chunks, chunks_of(&c, &data), "a trickling reader changes the chunks");
    }

    #[test]
    fn the_seed_moves_boundaries() {
        let data = pseudo_random(2 << 20, 11);
        let a = chunks_of(&Chunker::new(&params()), &data);
        let b = chunks_of(&Chunker::new(&ChunkerParams { seed: 43, ..params() }), &data);
        assert_ne!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    }
}
