//! Entry points for the fuzz targets in `fuzz/` to crate-private parsers; not a stable API.

/// A body that is not valid chunked coding.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidChunk;

/// Follows a chunked body fed in pieces of any size (the forwarder's own scanner).
pub struct ChunkedEnd(crate::chunked::ChunkedEnd);

impl ChunkedEnd {
    /// A scanner at the start of a body.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ChunkedEnd(crate::chunked::ChunkedEnd::new())
    }

    /// Consumes the next bytes of the body; where in `data` the body ends, if it does.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, InvalidChunk> {
        self.0.feed(data).map_err(|_| InvalidChunk)
    }
}
