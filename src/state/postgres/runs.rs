//! Runs: how one ingest batch's events of one flow part share a row of `event_runs`.
//!
//! A row with `n = 1` holds one event: `raw` is its bytes and `ord` its order key (every
//! row schema version 1 wrote is one). A row with `n > 1` holds `n` events in flow order,
//! `ord` being the first one's key, and `raw` their frames, each
//! `[u32 BE key length][key][u32 BE event length][event]`. A flow whose events arrive
//! together (the usual case for short flows) then costs one row, one index entry and
//! one compressed value instead of one per event; reads and deletes touch as many
//! fewer rows (docs/scaling.md, "What the tables hold").

use std::ops::Range;

use super::corrupt;
use crate::state::StateError;

/// Raw bytes above which a run is closed and the next event starts another; an event
/// larger than this is a run of its own.
pub(super) const RUN_TARGET_BYTES: usize = 256 * 1024;

/// Groups events already in flow order into runs: `(first key, raw, n)` per run.
pub(super) fn build_runs<'a>(events: &[(Vec<u8>, &'a [u8])]) -> Vec<(Vec<u8>, RunBytes<'a>, i32)> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start + 1;
        let mut bytes = events[start].1.len();
        while end < events.len() && bytes + events[end].1.len() <= RUN_TARGET_BYTES {
            bytes += events[end].1.len();
            end += 1;
        }
        let run = &events[start..end];
        let raw = match run {
            [(_, raw)] => RunBytes::Single(raw),
            _ => {
                let mut framed = Vec::with_capacity(bytes + run.len() * 32);
                for (key, raw) in run {
                    framed.extend_from_slice(&(key.len() as u32).to_be_bytes());
                    framed.extend_from_slice(key);
                    framed.extend_from_slice(&(raw.len() as u32).to_be_bytes());
                    framed.extend_from_slice(raw);
                }
                RunBytes::Framed(framed)
            }
        };
        runs.push((run[0].0.clone(), raw, run.len() as i32));
        start = end;
    }
    runs
}

/// A run's `raw` column: a single event's own bytes, or frames.
pub(super) enum RunBytes<'a> {
    Single(&'a [u8]),
    Framed(Vec<u8>),
}

impl RunBytes<'_> {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            RunBytes::Single(raw) => raw,
            RunBytes::Framed(framed) => framed,
        }
    }
}

/// One event of a run, as byte ranges of the row's `ord` (n = 1) or `raw` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EventAt {
    /// The row is the event: its key is the `ord` column and its bytes all of `raw`.
    Whole,
    /// Ranges inside `raw`.
    Framed {
        key: Range<usize>,
        raw: Range<usize>,
    },
}

/// The events of a row, checked: frames that do not add up to exactly `n` events
/// filling `raw` are a damaged row, reported with `what()` (the flow part, named only
/// when needed: this runs for every row read).
pub(super) fn split_run(
    raw: &[u8],
    n: i32,
    what: &dyn Fn() -> String,
) -> Result<Vec<EventAt>, StateError> {
    if n == 1 {
        return Ok(vec![EventAt::Whole]);
    }
    let damaged = |why: &str| corrupt(format!("event run of {}", what()), why.to_string());
    if n < 1 {
        return Err(damaged("its event count is below one"));
    }
    let mut events = Vec::with_capacity(n as usize);
    let mut at = 0usize;
    let take = |at: &mut usize| -> Result<Range<usize>, StateError> {
        let len = raw
            .get(*at..*at + 4)
            .ok_or_else(|| damaged("a frame length is cut short"))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = *at + 4;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= raw.len())
            .ok_or_else(|| damaged("a frame runs past the row's end"))?;
        *at = end;
        Ok(start..end)
    };
    for _ in 0..n {
        let key = take(&mut at)?;
        let event = take(&mut at)?;
        events.push(EventAt::Framed { key, raw: event });
    }
    if at != raw.len() {
        return Err(damaged("bytes follow its last frame"));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sizes: &[usize]) -> Vec<(Vec<u8>, Vec<u8>)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (vec![i as u8; 3], vec![b'a' + i as u8; s]))
            .collect()
    }

    fn decoded(raw: &[u8], key: &[u8], n: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
        split_run(raw, n, &|| "t/f part 1".into())
            .unwrap()
            .into_iter()
            .map(|at| match at {
                EventAt::Whole => (key.to_vec(), raw.to_vec()),
                EventAt::Framed { key, raw: r } => (raw[key].to_vec(), raw[r].to_vec()),
            })
            .collect()
    }

    #[test]
    fn runs_round_trip_and_close_at_the_target() {
        let owned = events(&[10, 0, RUN_TARGET_BYTES - 10, 1, RUN_TARGET_BYTES + 5, 7]);
        let input: Vec<(Vec<u8>, &[u8])> = owned
            .iter()
            .map(|(k, r)| (k.clone(), r.as_slice()))
            .collect();
        let runs = build_runs(&input);
        // [10, 0, target-10] fill the first run; 1 starts the next; the oversized event
        // is alone; 7 follows it.
        let counts: Vec<i32> = runs.iter().map(|r| r.2).collect();
        assert_eq!(counts, vec![3, 1, 1, 1]);
        let mut back = Vec::new();
        for (key, raw, n) in &runs {
            back.extend(decoded(raw.as_slice(), key, *n));
        }
        assert_eq!(back, owned);
        assert!(matches!(runs[1].1, RunBytes::Single(_)));
    }

    #[test]
    fn damaged_runs_are_errors_that_name_the_part() {
        let owned = events(&[4, 5]);
        let input: Vec<(Vec<u8>, &[u8])> = owned
            .iter()
            .map(|(k, r)| (k.clone(), r.as_slice()))
            .collect();
        let runs = build_runs(&input);
        let raw = runs[0].1.as_slice().to_vec();
        assert_eq!(split_run(&raw, 2, &|| "x".into()).unwrap().len(), 2);
        let mut longer = raw.clone();
        longer.push(0);
        for (bytes, n) in [
            (&raw[..raw.len() - 1], 2),
            (&raw[..3], 2),
            (&raw[..], 3),
            (&longer[..], 2),
            (&raw[..], 0),
            (&raw[..], -4),
        ] {
            let err = split_run(bytes, n, &|| "acme/flow-1 part 2".into()).unwrap_err();
            assert!(err.to_string().contains("acme/flow-1 part 2"), "{err}");
        }
        // A length field claiming 4 GiB does not overflow or allocate.
        let hostile = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(split_run(&hostile, 2, &|| "x".into()).is_err());
    }
}
