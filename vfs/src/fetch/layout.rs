//! Where chunks sit in their data blobs, and which byte ranges to request for a set of wanted
//! chunks: the planning half of the fetch path, pure and testable without a network.
//!
//! A miss is not fetched alone: the chunks after it in blob order (and a few before it) are likely
//! read next, because the converter writes a directory's files together and a recorded start's
//! files first, in the order they were read. [`Readahead`] sizes that span as kernel readahead
//! does (small for a random read, doubling while misses keep landing in the same region), and
//! [`split`] turns a sorted set of chunks into range requests, bridging small gaps and capping
//! each request so a large span becomes several parallel requests.

use std::collections::VecDeque;
use std::ops::Range;

use crate::index::{BlobRef, Chunk, Index, Kind};

/// Every distinct chunk of every data blob, in blob order.
#[derive(Debug, Clone, Default)]
pub struct BlobLayout {
    blobs: Vec<BlobRef>,
    /// Per blob, chunks sorted by offset, one per offset.
    slots: Vec<Vec<Chunk>>,
    /// Per blob, parallel to `slots`: whether only files a start seldom reads use the chunk
    /// ([`super::seldom`]); spans around a file's first chunk leave those out.
    seldom: Vec<Vec<bool>>,
}

impl BlobLayout {
    /// The layout of every chunk an index's files point at.
    pub fn of(index: &Index) -> BlobLayout {
        let chunks = index.inodes.iter().flat_map(|inode| match &inode.kind {
            Kind::File { chunks, .. } => chunks.as_slice(),
            _ => &[],
        });
        let mut layout = BlobLayout::new(index.blobs.clone(), chunks.copied());
        let seldom = super::seldom::seldom_read_chunks(index);
        for (blob, (flags, slots)) in layout.seldom.iter_mut().zip(&layout.slots).enumerate() {
            for (flag, c) in flags.iter_mut().zip(slots) {
                *flag = seldom.contains(&(blob as u32, c.offset));
            }
        }
        layout
    }

    /// A layout from a blob table and chunks in any order (duplicates are dropped).
    pub fn new(blobs: Vec<BlobRef>, chunks: impl IntoIterator<Item = Chunk>) -> BlobLayout {
        let mut slots: Vec<Vec<Chunk>> = vec![Vec::new(); blobs.len()];
        for c in chunks {
            if let Some(s) = slots.get_mut(c.blob as usize) {
                s.push(c);
            }
        }
        for s in &mut slots {
            s.sort_by_key(|c| c.offset);
            s.dedup_by_key(|c| c.offset);
        }
        let seldom = slots.iter().map(|s| vec![false; s.len()]).collect();
        BlobLayout { blobs, slots, seldom }
    }

    pub fn blob(&self, n: u32) -> Option<&BlobRef> {
        self.blobs.get(n as usize)
    }

    /// Chunks of blob `blob` around `chunk` that end after `from` and by `to`, in blob order,
    /// without the seldom-read ones if `skip_seldom`. Only chunks that lie wholly inside the blob
    /// and do not overlap their predecessor are returned: a hostile index cannot make a span read
    /// outside a blob or twice over a byte.
    pub fn neighbours(&self, chunk: &Chunk, from: u64, to: u64, skip_seldom: bool) -> impl Iterator<Item = &Chunk> {
        let slots = self.slots.get(chunk.blob as usize).map(Vec::as_slice).unwrap_or(&[]);
        let seldom = self.seldom.get(chunk.blob as usize).map(Vec::as_slice).unwrap_or(&[]);
        let size = self.blob(chunk.blob).map_or(0, |b| b.size);
        // A chunk straddling `from` belongs to this window: the one before it could not take it.
        let first = slots.partition_point(|c| c.end() <= from);
        let mut prev_end = 0u64;
        slots[first..]
            .iter()
            .zip(&seldom[first..])
            .take_while(move |(c, _)| c.offset < to)
            .filter(move |(c, _)| {
                let end = c.end();
                let ok = c.offset >= prev_end && end <= size && end <= to;
                if ok {
                    prev_end = end;
                }
                ok
            })
            .filter(move |(_, &seldom)| !(skip_seldom && seldom))
            .map(|(c, _)| c)
    }

    /// Distinct chunks (by offset) in blob `blob`.
    pub fn chunks_of(&self, blob: u32) -> &[Chunk] {
        self.slots.get(blob as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn blobs(&self) -> &[BlobRef] {
        &self.blobs
    }
}

/// Adaptive span sizing for on-demand misses, per region of a blob (a few regions at once, like
/// concurrent sequential streams in kernel readahead).
///
/// Two caps: a reader streaming through one large file (reading its second chunk or later) grows
/// its spans up to `max`; a reader hopping between files (a program start opening libraries and
/// modules) only up to `across_files`. Spans there fetch neighbours the reader may never open, and
/// on a link of 20 ms and 200 Mbit/s one round trip costs what 0.5 MB of transfer does: large
/// speculative spans there cost the start more than the round trips they save.
#[derive(Debug)]
pub struct Readahead {
    min: u64,
    max: u64,
    across_files: u64,
    regions: VecDeque<Region>,
}

#[derive(Debug, Clone, Copy)]
struct Region {
    blob: u32,
    start: u64,
    end: u64,
    window: u64,
}

/// Regions remembered at once; the least recently grown is forgotten first.
const REGIONS: usize = 16;

impl Readahead {
    /// Windows start at `min` compressed bytes and double up to `across_files`, or up to `max` for
    /// a reader streaming through one file. `max == 0` disables spans.
    pub fn new(min: u64, across_files: u64, max: u64) -> Readahead {
        let across_files = across_files.clamp(1, max.max(1));
        Readahead { min: min.min(across_files), max, across_files, regions: VecDeque::new() }
    }

    /// The byte window `[from, to)` of blob `blob` to fetch around a miss at `offset`. A miss
    /// within one window of a region fetched before doubles that region's window (up to the
    /// across-files cap: a miss is no sign of a stream).
    pub fn window(&mut self, blob: u32, offset: u64) -> (u64, u64) {
        if self.max == 0 {
            return (offset, offset);
        }
        let near = self.regions.iter().position(|r| {
            r.blob == blob && offset.saturating_add(r.window) >= r.start && offset <= r.end.saturating_add(r.window)
        });
        let mut region = match near.and_then(|i| self.regions.remove(i)) {
            Some(mut r) => {
                r.window = (r.window * 2).min(self.across_files);
                r
            }
            None => Region { blob, start: offset, end: offset, window: self.min.max(1) },
        };
        // Mostly forward (files after this one are read next), a quarter back (siblings written
        // before it in the blob).
        let back = region.window / 4;
        let from = offset.saturating_sub(back);
        let to = from.saturating_add(region.window);
        region.start = region.start.min(from);
        region.end = region.end.max(to);
        self.regions.push_front(region);
        self.regions.truncate(REGIONS);
        (from, to)
    }
}

impl Readahead {
    /// A read at `offset` landed inside a region fetched before, less than half a window from its
    /// end: returns the next window (`[end, end + window)`, the window doubled) so the next span is
    /// in flight before the reader gets there, as the kernel's asynchronous readahead does.
    /// `streaming`: the read is of a file's second chunk or later, so the window may grow to `max`.
    pub fn ahead(&mut self, blob: u32, offset: u64, streaming: bool) -> Option<(u64, u64)> {
        let cap = if streaming { self.max } else { self.across_files };
        let r = self.regions.iter_mut().find(|r| r.blob == blob && r.start <= offset && offset < r.end)?;
        if r.end - offset > r.window / 2 {
            return None;
        }
        r.window = (r.window * 2).min(cap);
        let from = r.end;
        r.end = from.saturating_add(r.window);
        Some((from, r.end))
    }

    /// Whether any region is being tracked (no miss yet: nothing to read ahead of).
    pub fn is_idle(&self) -> bool {
        self.regions.is_empty()
    }
}

/// Splits chunks of one blob, sorted by offset and not overlapping, into range requests: chunks
/// separated by at most `max_gap` bytes share a request (the gap is fetched and dropped), and no
/// request is larger than `max_request` unless a single chunk is. Returns index ranges into `chunks`.
pub fn split(chunks: &[Chunk], max_gap: u64, max_request: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=chunks.len() {
        let close = match chunks.get(i) {
            None => true,
            Some(c) => {
                let prev = &chunks[i - 1];
                let prev_end = prev.end();
                let end = c.end();
                c.blob != prev.blob
                    || c.offset < prev_end
                    || c.offset - prev_end > max_gap
                    || end - chunks[start].offset > max_request
            }
        };
        if close {
            out.push(start..i);
            start = i;
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// The blob byte range a request for `chunks` (sorted, one blob) covers.
pub fn byte_range(chunks: &[Chunk]) -> Range<u64> {
    match (chunks.first(), chunks.last()) {
        (Some(a), Some(b)) => a.offset..b.end(),
        _ => 0..0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn chunk(blob: u32, offset: u64, len: u32) -> Chunk {
        Chunk { blob, offset, compressed_len: len, len, digest: Digest::of(&offset.to_le_bytes()) }
    }

    #[test]
    fn neighbours_are_in_blob_order_inside_the_window_and_the_blob() {
        let blobs = vec![BlobRef { digest: Digest::of(b"b"), size: 1000 }];
        let cs = [chunk(0, 300, 100), chunk(0, 0, 100), chunk(0, 100, 100), chunk(0, 0, 100), chunk(0, 950, 100)];
        let l = BlobLayout::new(blobs, cs);
        let got: Vec<u64> = l.neighbours(&cs[2], 0, 10_000, true).map(|c| c.offset).collect();
        assert_eq!(got, [0, 100, 300], "sorted, deduplicated, and the chunk past the blob's end dropped");
        let got: Vec<u64> = l.neighbours(&cs[2], 100, 350, true).map(|c| c.offset).collect();
        assert_eq!(got, [100], "a chunk crossing the window's end is left for the next span");
    }

    #[test]
    fn readahead_grows_for_misses_in_one_region_up_to_the_across_files_cap_and_starts_small_elsewhere() {
        let mut ra = Readahead::new(1 << 20, 4 << 20, 16 << 20);
        let (f, t) = ra.window(0, 4 << 20);
        assert_eq!(t - f, 1 << 20);
        let mut w = 1 << 20;
        let mut at = t;
        for _ in 0..6 {
            let (f, t) = ra.window(0, at);
            w = (w * 2).min(4 << 20);
            assert_eq!(t - f, w);
            at = t;
        }
        assert_eq!(w, 4 << 20, "misses alone grow a span only to the across-files cap");
        let (f, t) = ra.window(0, 900 << 20);
        assert_eq!(t - f, 1 << 20, "a far miss is a new region");
        let (f, t) = ra.window(1, at);
        assert_eq!(t - f, 1 << 20, "another blob is another region");
        assert_eq!(Readahead::new(1 << 20, 4 << 20, 0).window(0, 5), (5, 5), "max 0 disables spans");
    }

    #[test]
    fn reads_near_the_end_of_a_region_start_the_next_window() {
        let mut ra = Readahead::new(1 << 20, 16 << 20, 16 << 20);
        assert!(ra.is_idle());
        let (from, to) = ra.window(0, 0);
        assert_eq!((from, to), (0, 1 << 20));
        assert_eq!(ra.ahead(0, 100, true), None, "far from the end");
        assert_eq!(ra.ahead(1, to - 1, true), None, "another blob");
        assert_eq!(ra.ahead(0, to - 1, true), Some((to, to + (2 << 20))), "next window, doubled, starting at the end");
        assert_eq!(ra.ahead(0, to - 1, true), None, "already ahead");
        assert_eq!(ra.ahead(0, to + (2 << 20) - 10, true), Some((3 << 20, 7 << 20)));
    }

    #[test]
    fn only_a_reader_streaming_through_one_file_grows_spans_past_the_across_files_cap() {
        let mut ra = Readahead::new(1 << 20, 2 << 20, 16 << 20);
        let (_, mut end) = ra.window(0, 0);
        // Four reads, each near the end of the span before: the sizes (MiB) of the spans they start.
        let mut spans = |streaming: bool| -> Vec<u64> {
            (0..4)
                .map(|_| {
                    let (from, to) = ra.ahead(0, end - 1, streaming).expect("near the end");
                    end = to;
                    (to - from) >> 20
                })
                .collect()
        };
        assert_eq!(spans(false), [2, 2, 2, 2], "hopping between small files: capped at 2 MiB");
        assert_eq!(spans(true), [4, 8, 16, 16], "streaming through one file: doubling up to 16 MiB");
    }

    #[test]
    fn split_bridges_small_gaps_caps_requests_and_never_overlaps() {
        let cs = [chunk(0, 0, 100), chunk(0, 100, 100), chunk(0, 250, 100), chunk(0, 1000, 100), chunk(0, 1100, 500)];
        assert_eq!(split(&cs, 64, 10_000), [0..3, 3..5], "gap 50 bridged, gap 650 not");
        assert_eq!(split(&cs, 1000, 400), [0..3, 3..4, 4..5], "cap 400");
        assert_eq!(split(&cs[4..], 0, 10), vec![0..1], "a chunk larger than the cap is its own request");
        let overlapping = [chunk(0, 0, 100), chunk(0, 50, 100)];
        assert_eq!(split(&overlapping, 1000, 1000), [0..1, 1..2]);
        assert_eq!(byte_range(&cs[..3]), 0..350);
        assert!(split(&[], 1, 1).is_empty());
    }
}
