//! The chunked-body end scanner: however a body is split into reads, it ends (or is rejected)
//! at the same place as when it arrives whole.
//!
//! Input: one byte `n` (taken modulo 8), `n` little-endian u16 read boundaries (taken modulo
//! the body's length), then the body; a seed is `\0` followed by a chunked body.
#![no_main]

use itproxy_router::codec::ChunkedEnd;
use libfuzzer_sys::fuzz_target;

/// What the scanner says about `body` read in the pieces between `cuts` (sorted): the end's
/// offset in the whole body, `Ok(None)` if it wants more, `Err` if the coding is invalid.
fn scan(body: &[u8], cuts: &[usize]) -> Result<Option<usize>, ()> {
    let mut scanner = ChunkedEnd::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([&body.len()]) {
        match scanner.feed(&body[start..cut]) {
            Ok(Some(end)) => {
                assert!(end <= cut - start, "the end lies past the read");
                return Ok(Some(start + end));
            }
            Ok(None) => start = cut,
            Err(_) => return Err(()),
        }
    }
    Ok(None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len() / 2);
    let (cuts, body) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = scan(body, &[]);
    assert_eq!(scan(body, &cuts), whole, "split at {cuts:?}");
    // Byte by byte is the most split a read can be.
    let every: Vec<usize> = (1..body.len()).collect();
    assert_eq!(scan(body, &every), whole, "fed byte by byte");
});
