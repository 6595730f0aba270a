//! The chunked body (RFC 9112 §7.1): chunk-size lines with their extensions, chunk data and its
//! CRLF, up to the last chunk (whose trailer section goes back to the field scanner of
//! [`super`]). The states of [`FramingValidator`] that belong to a chunked body, one byte at a
//! time; chunk data itself is skipped by `run` without being scanned.

use super::*;

impl FramingValidator {
    /// One byte of a chunked body, in any of its states but `ChunkData`.
    #[inline]
    pub(super) fn chunk_byte(&mut self, b: u8) -> Result<(), FramingError> {
        use FramingError as E;
        match self.state {
            State::ChunkSizeStart
            | State::ChunkSize
            | State::ExtNameStart
            | State::ExtName
            | State::ExtValStart
            | State::ExtToken
            | State::ExtQuoted
            | State::ExtQuotedPair
            | State::ExtAfterQuoted => {
                self.chunk_line += 1;
                if self.chunk_line > MAX_CHUNK_LINE {
                    return Err(E::BadChunk);
                }
            }
            _ => {}
        }
        match self.state {
            State::ChunkSizeStart => {
                if is(b, HEX) {
                    self.remaining = hex_val(b);
                    self.count = 1;
                    self.state = State::ChunkSize;
                } else {
                    return Err(line_err(b, E::BadChunk));
                }
            }
            State::ChunkSize => {
                if is(b, HEX) {
                    self.count += 1;
                    if self.count > MAX_CHUNK_SIZE_DIGITS {
                        return Err(E::BadChunk);
                    }
                    self.remaining = (self.remaining << 4) | hex_val(b);
                } else {
                    self.after_chunk_item(b, false)?;
                }
            }
            State::ExtNameStart => {
                if is(b, TCHAR) {
                    self.state = State::ExtName;
                } else {
                    return Err(line_err(b, E::BadChunk));
                }
            }
            State::ExtName if !is(b, TCHAR) => self.after_chunk_item(b, true)?,
            State::ExtValStart => {
                if is(b, TCHAR) {
                    self.state = State::ExtToken;
                } else if b == b'"' {
                    self.state = State::ExtQuoted;
                } else {
                    return Err(line_err(b, E::BadChunk));
                }
            }
            State::ExtToken if !is(b, TCHAR) => self.after_chunk_item(b, false)?,
            State::ExtQuoted => {
                if b == b'"' {
                    self.state = State::ExtAfterQuoted;
                } else if b == b'\\' {
                    self.state = State::ExtQuotedPair;
                } else if !is(b, QDTEXT) {
                    return Err(line_err(b, E::BadChunk));
                }
            }
            State::ExtQuotedPair => {
                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                if is(b, VALUE) {
                    self.state = State::ExtQuoted;
                } else {
                    return Err(line_err(b, E::BadChunk));
                }
            }
            State::ExtAfterQuoted => self.after_chunk_item(b, false)?,
            State::ChunkSizeLf => {
                if b != b'\n' {
                    return Err(E::BareCr);
                }
                if self.remaining == 0 {
                    // Last chunk: the trailer section follows.
                    self.in_trailer = true;
                    self.head_len = 0;
                    self.state = State::FieldStart;
                } else {
                    self.state = State::ChunkData;
                }
            }
            State::ChunkDataCr => {
                if b != b'\r' {
                    return Err(E::BadChunk);
                }
                self.state = State::ChunkDataLf;
            }
            State::ChunkDataLf => {
                if b != b'\n' {
                    return Err(E::BadChunk);
                }
                self.start_chunk_line();
            }
            // Inside an extension name or token; or not a chunked-body state (`run` never
            // calls this then).
            _ => {}
        }
        Ok(())
    }

    #[inline]
    pub(super) fn start_chunk_line(&mut self) {
        self.state = State::ChunkSizeStart;
        self.chunk_line = 0;
        self.remaining = 0;
        self.count = 0;
    }

    /// After a chunk size, extension name, extension value: `;` starts another extension, `=`
    /// (only after a name) starts a value, CR ends the line.
    #[inline]
    fn after_chunk_item(&mut self, b: u8, after_name: bool) -> Result<(), FramingError> {
        match b {
            b';' => self.state = State::ExtNameStart,
            b'=' if after_name => self.state = State::ExtValStart,
            b'\r' => self.state = State::ChunkSizeLf,
            _ => return Err(line_err(b, FramingError::BadChunk)),
        }
        Ok(())
    }
}
