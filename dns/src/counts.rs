//! Queries counted by type and outcome, for the daemon's metrics. The UDP workers count a
//! batch in a plain array of their own and add it here once per batch; hickory's path adds
//! each query as it is answered.

use std::sync::atomic::{AtomicU64, Ordering};

/// The record types counted by name; every other type is counted as `other`.
pub const TYPES: [&str; 14] = [
    "A", "AAAA", "CNAME", "MX", "TXT", "SRV", "NS", "SOA", "PTR", "HTTPS", "SVCB", "CAA", "ANY",
    "other",
];
const TYPE_CODES: [u16; 13] = [1, 28, 5, 15, 16, 33, 2, 6, 12, 65, 64, 257, 255];

/// What became of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the zone with records.
    Answer,
    /// Answered from the zone: the name exists, without records of that type.
    NoData,
    /// Answered from the zone: no such name.
    NxDomain,
    /// Sent to an upstream resolver (whatever it answered).
    Forwarded,
    /// Refused (a name outside the domains from an asker that may not forward, a class
    /// other than IN).
    Refused,
    /// Answered with an error: malformed, not implemented, a bad EDNS version, a failure.
    Error,
    /// Not answered: more queries were waiting than the server takes at once.
    Dropped,
}

/// Every outcome, in the order counts are kept.
pub const OUTCOMES: [Outcome; 7] = [
    Outcome::Answer,
    Outcome::NoData,
    Outcome::NxDomain,
    Outcome::Forwarded,
    Outcome::Refused,
    Outcome::Error,
    Outcome::Dropped,
];

impl Outcome {
    /// The outcome as the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answer => "answer",
            Outcome::NoData => "nodata",
            Outcome::NxDomain => "nxdomain",
            Outcome::Forwarded => "forwarded",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
        }
    }

    /// A zone answer's outcome from its response code and answer count.
    pub(crate) fn of_answer(rcode: u8, answers: u16) -> Outcome {
        match (rcode, answers) {
            (0, 0) => Outcome::NoData,
            (0, _) => Outcome::Answer,
            (3, _) => Outcome::NxDomain,
            (5, _) => Outcome::Refused,
            _ => Outcome::Error,
        }
    }
}

/// The index of record type `code` in [`TYPES`].
pub(crate) fn type_index(code: u16) -> usize {
    TYPE_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(TYPES.len() - 1)
}

/// The type of the first question of a DNS message, if it has one that can be read.
pub(crate) fn question_type(msg: &[u8]) -> Option<u16> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        // A question's name is never compressed; a pointer here is no question to count.
        if len & 0xC0 != 0 {
            return None;
        }
        at += 1 + len;
    }
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Counts of queries by type and outcome.
#[derive(Debug, Default)]
pub struct QueryCounts {
    cells: [[AtomicU64; OUTCOMES.len()]; TYPES.len()],
}

/// A worker's counts of one batch, added to [`QueryCounts`] at its end.
#[derive(Default)]
pub(crate) struct Batch {
    cells: [[u64; OUTCOMES.len()]; TYPES.len()],
    any: bool,
}

impl Batch {
    pub(crate) fn add(&mut self, type_code: Option<u16>, outcome: Outcome) {
        let t = type_code.map_or(TYPES.len() - 1, type_index);
        self.cells[t][outcome as usize] += 1;
        self.any = true;
    }

    /// Counts the fast path's answer `out`.
    pub(crate) fn add_answer(&mut self, out: &[u8]) {
        let rcode = out[3] & 0x0F;
        let answers = u16::from_be_bytes([out[6], out[7]]);
        self.add(question_type(out), Outcome::of_answer(rcode, answers));
    }

    /// Adds the batch to `counts` and empties it.
    pub(crate) fn flush(&mut self, counts: &QueryCounts) {
        if !self.any {
            return;
        }
        for (row, cells) in counts.cells.iter().zip(&mut self.cells) {
            for (cell, n) in row.iter().zip(cells.iter_mut()) {
                if *n > 0 {
                    cell.fetch_add(*n, Ordering::Relaxed);
                    *n = 0;
                }
            }
        }
        self.any = false;
    }
}

impl QueryCounts {
    /// Counts one query.
    pub(crate) fn add(&self, type_code: Option<u16>, outcome: Outcome) {
        let t = type_code.map_or(TYPES.len() - 1, type_index);
        self.cells[t][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every count that is not zero: (type, outcome, queries).
    pub fn counted(&self) -> Vec<(&'static str, Outcome, u64)> {
        let mut all = Vec::new();
        for (t, row) in self.cells.iter().enumerate() {
            for (o, cell) in row.iter().enumerate() {
                let n = cell.load(Ordering::Relaxed);
                if n > 0 {
                    all.push((TYPES[t], OUTCOMES[o], n));
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_type_is_read_from_a_message() {
        // id, flags, 1 question; api.test AAAA IN
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03api\x04test\x00\x00\x1c\x00\x01");
        assert_eq!(question_type(&q), Some(28));
        assert_eq!(question_type(&q[..q.len() - 3]), None, "cut short");
        assert_eq!(question_type(&q[..11]), None);
        let mut no_question = q.clone();
        no_question[5] = 0;
        assert_eq!(question_type(&no_question), None);
        assert_eq!(TYPES[type_index(28)], "AAAA");
        assert_eq!(TYPES[type_index(99)], "other");
    }

    #[test]
    fn a_batch_adds_up_once_flushed() {
        let counts = QueryCounts::default();
        let mut batch = Batch::default();
        batch.add(Some(1), Outcome::Answer);
        batch.add(Some(1), Outcome::Answer);
        batch.add(None, Outcome::Dropped);
        assert!(counts.counted().is_empty());
        batch.flush(&counts);
        batch.flush(&counts);
        counts.add(Some(28), Outcome::Forwarded);
        assert_eq!(
            counts.counted(),
            [
                ("A", Outcome::Answer, 2),
                ("AAAA", Outcome::Forwarded, 1),
                ("other", Outcome::Dropped, 1)
            ]
        );
    }
}
