//! Small parts inline: the event pointers and dedupe digests of a flow's open part
//! ride in its meta record instead of one B-tree entry each.
//!
//! Why: ingest already reads and writes a flow's meta once per batch. With one entry
//! per event and one per dedupe key, a batch cost two B-tree inserts per event on top;
//! most flows are small (tens of events), so keeping their index inside the meta record
//! turns those into a few bytes appended to a value that is written anyway.
//!
//! Layout (all integers big-endian):
//! - meta record (`flow key | 0x00`): postcard [`FlowMeta`], then an optional extension
//!   `0xFE | 0x01 | flags | digests | run`. A record without it was written before
//!   this layout: its dedupe keys and events are individual entries.
//! - digests: `u16 n | n × 16 bytes`, the first 16 bytes of SHA-256 over the dedupe
//!   key (`u64 len | a | u64 len | b`). Once [`MAX_DIGESTS`] are held, a flow's
//!   further dedupe keys are individual entries (flag [`DEDUPE_SPILLED`]).
//! - run: `u16 n | n × (u16 len | order | 21-byte pointer)`, sorted by order.
//! - Events past the first [`MAX_RUN`] go to chunks: `flow key | 0x02 | u32 part |
//!   0xFE | u32 chunk` → a run (`0xFE | 0x01 | run`) of up to [`CHUNK_EVENTS`]
//!   events, the `k`-th event past the inline ones in chunk `k / CHUNK_EVENTS`.
//!   Why: one entry per event made a 100-event part 68 B-tree entries, each inserted
//!   at ingest, read at archive and deleted at complete; chunks make it 3. Stores
//!   written before chunks hold such events as individual entries
//!   (`… | u32 part | order`); readers merge all three by order.
//! - A sealed part's meta record stays until complete deletes it, unless an event opens
//!   the next part first: then its run moves to `flow key | 0x02 | u32 part | 0xFF`
//!   (`0xFE | 0x01 | run`) until the part is deleted. Either way its digests go to
//!   `flow key | 0x01 | 0xFF` (`0xFE | 0x01 | flags | digests`), kept like dedupe keys
//!   so that a redelivered event of an archived part is still a duplicate.
//!
//! Neither key can equal an individual entry's key: those carry at least a length
//! prefix and an arrival number after the tag.

use super::journal::{EventPointer, POINTER_LEN};
use super::keys::corrupt;
use super::{FlowMeta, StateError};

/// First byte of an extension, run value or digest value.
const TAG: u8 = 0xFE;
const VERSION: u8 = 1;
/// Events of one part kept inline; later ones go to chunks.
pub(super) const MAX_RUN: usize = 32;
/// Events per chunk past the inline ones: ~2.5 KB values at the bench's ~40-byte
/// entries, well inside a 4 KiB B-tree page, and a 100-event part in 3 entries.
pub(super) const CHUNK_EVENTS: u64 = 64;
/// Dedupe digests of one flow kept inline (across its parts).
pub(super) const MAX_DIGESTS: usize = 64;
/// Flag: some of the flow's dedupe keys are individual entries.
pub(super) const DEDUPE_SPILLED: u8 = 1;

pub(super) type DedupeDigest = [u8; 16];

pub(super) use crate::state::meta::digest;

/// A flow's inline dedupe digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Digests {
    pub list: Vec<DedupeDigest>,
    pub flags: u8,
}

impl Digests {
    /// What a flow whose keys may all be individual entries starts with.
    pub fn spilled() -> Digests {
        Digests {
            list: Vec::new(),
            flags: DEDUPE_SPILLED,
        }
    }

    pub fn is_spilled(&self) -> bool {
        self.flags & DEDUPE_SPILLED != 0
    }

    /// Keeps `d` inline if there is room; false when it must be an individual entry.
    pub fn push(&mut self, d: DedupeDigest) -> bool {
        if self.list.len() < MAX_DIGESTS {
            self.list.push(d);
            true
        } else {
            self.flags |= DEDUPE_SPILLED;
            false
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.flags);
        out.extend_from_slice(&(self.list.len() as u16).to_be_bytes());
        for d in &self.list {
            out.extend_from_slice(d);
        }
    }

    fn decode_from(r: &mut Reader) -> Result<Digests, StateError> {
        let flags = r.u8()?;
        let n = r.u16()? as usize;
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let mut d = [0u8; 16];
            d.copy_from_slice(r.take(16)?);
            list.push(d);
        }
        Ok(Digests { list, flags })
    }

    /// The value of the digest entry kept after seal.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TAG, VERSION];
        self.encode_into(&mut out);
        out
    }

    pub fn decode(value: &[u8]) -> Result<Digests, StateError> {
        let mut r = Reader::new(value, "dedupe digests")?;
        let d = Digests::decode_from(&mut r)?;
        r.end()?;
        Ok(d)
    }
}

/// A part's inline events: `(order, pointer)` sorted by order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Run {
    pub events: Vec<(Vec<u8>, EventPointer)>,
}

impl Run {
    /// Keeps the event inline if there is room; gives it back otherwise.
    pub fn insert(
        &mut self,
        order: Vec<u8>,
        pointer: EventPointer,
    ) -> Option<(Vec<u8>, EventPointer)> {
        if self.events.len() >= MAX_RUN {
            return Some((order, pointer));
        }
        self.push(order, pointer);
        None
    }

    /// Adds the event in order, however many the run holds (a chunk).
    pub fn push(&mut self, order: Vec<u8>, pointer: EventPointer) {
        // Orders are unique within a part (they end in the arrival number).
        let at = self.events.partition_point(|(o, _)| *o < order);
        self.events.insert(at, (order, pointer));
    }

    /// The smallest order in an encoded run, without decoding the rest.
    pub fn first_order(value: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let mut r = Reader::new(value, "event chunk")?;
        if r.u16()? == 0 {
            return Ok(None);
        }
        let len = r.u16()? as usize;
        Ok(Some(r.take(len)?.to_vec()))
    }

    pub fn pointers(&self) -> Vec<EventPointer> {
        self.events.iter().map(|(_, p)| *p).collect()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.events.len() as u16).to_be_bytes());
        for (order, p) in &self.events {
            out.extend_from_slice(&(order.len() as u16).to_be_bytes());
            out.extend_from_slice(order);
            out.extend_from_slice(&p.encode());
        }
    }

    fn decode_from(r: &mut Reader) -> Result<Run, StateError> {
        let n = r.u16()? as usize;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u16()? as usize;
            let order = r.take(len)?.to_vec();
            let p = EventPointer::decode(r.take(POINTER_LEN)?)
                .ok_or_else(|| corrupt("inline events", "a pointer without its tag"))?;
            events.push((order, p));
        }
        Ok(Run { events })
    }

    /// The value of the run entry a sealed part keeps until it is deleted.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TAG, VERSION];
        self.encode_into(&mut out);
        out
    }

    pub fn decode(value: &[u8]) -> Result<Run, StateError> {
        let mut r = Reader::new(value, "inline events")?;
        let run = Run::decode_from(&mut r)?;
        r.end()?;
        Ok(run)
    }
}

/// A flow's meta record: the meta of its open part with that part's inline index.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MetaRecord {
    pub meta: FlowMeta,
    pub digests: Digests,
    pub run: Run,
}

impl MetaRecord {
    pub fn new(meta: FlowMeta, digests: Digests) -> MetaRecord {
        MetaRecord {
            meta,
            digests,
            run: Run::default(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        let mut out = super::keys::encode("flow meta", &self.meta)?;
        out.extend_from_slice(&[TAG, VERSION]);
        self.digests.encode_into(&mut out);
        self.run.encode_into(&mut out);
        Ok(out)
    }

    pub fn decode(value: &[u8]) -> Result<MetaRecord, StateError> {
        let (meta, rest) =
            postcard::take_from_bytes::<FlowMeta>(value).map_err(|e| corrupt("flow meta", e))?;
        if rest.is_empty() {
            // Written before inline indexes: everything is an individual entry.
            return Ok(MetaRecord::new(meta, Digests::spilled()));
        }
        let mut r = Reader::new(rest, "flow meta extension")?;
        let digests = Digests::decode_from(&mut r)?;
        let run = Run::decode_from(&mut r)?;
        r.end()?;
        Ok(MetaRecord { meta, digests, run })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Reader<'a>, StateError> {
        let mut r = Reader { bytes, what };
        if r.take(2)? != [TAG, VERSION] {
            return Err(corrupt(what, "unknown tag or version"));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.bytes.len() < n {
            return Err(corrupt(self.what, "truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StateError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn end(&self) -> Result<(), StateError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(self.what, "trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(i: u64) -> EventPointer {
        EventPointer {
            file: 1,
            offset: i * 100,
            len: 100,
            crc: i as u32,
        }
    }

    #[test]
    fn runs_stay_sorted_and_bounded() {
        let mut run = Run::default();
        for i in (0..MAX_RUN as u64).rev() {
            assert!(run.insert(i.to_be_bytes().to_vec(), pointer(i)).is_none());
        }
        let orders: Vec<_> = run.events.iter().map(|(o, _)| o.clone()).collect();
        let mut sorted = orders.clone();
        sorted.sort();
        assert_eq!(orders, sorted);
        let extra = run.insert(vec![0xff], pointer(99));
        assert_eq!(extra, Some((vec![0xff], pointer(99))), "a full run refuses");
        assert_eq!(Run::decode(&run.encode()).unwrap(), run);
    }

    #[test]
    fn digests_spill_past_their_cap_and_round_trip() {
        let mut d = Digests::default();
        for i in 0..MAX_DIGESTS {
            assert!(d.push(digest("src", &i.to_string())));
        }
        assert!(!d.is_spilled());
        assert!(!d.push(digest("src", "last")));
        assert!(d.is_spilled());
        assert_eq!(Digests::decode(&d.encode()).unwrap(), d);
        // Length framing: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(digest("ab", "c"), digest("a", "bc"));
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let mut run = Run::default();
        run.insert(vec![1, 2, 3], pointer(1));
        let bytes = run.encode();
        for cut in 0..bytes.len() {
            assert!(Run::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Run::decode(&longer).is_err());
        assert!(
            Digests::decode(&[0xFE, 9, 0, 0, 0]).is_err(),
            "unknown version"
        );
    }
}
