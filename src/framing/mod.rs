//! Strict HTTP/1.x request framing validator.
//!
//! anticamera sits behind CDNs and load balancers. If a front component and anticamera disagree
//! on where one request ends and the next begins (request smuggling), a response can be
//! delivered to the wrong user. hyper's parser (httparse) is lenient: it accepts bare-LF line
//! endings, `Transfer-Encoding: chunked, chunked`, `Content-Length` together with
//! `Transfer-Encoding`, duplicated equal `Content-Length` headers, and more. This module sees the
//! raw bytes a client sends on one connection, in whatever pieces the socket returns them, before
//! hyper parses them, and rejects every request whose framing is not unambiguous under
//! RFC 9112.
//!
//! [`FramingValidator`] is a byte-level state machine: it never buffers (no allocation at all),
//! it keeps track of message boundaries itself (request line, header fields, then the body
//! framed by `Content-Length` or `chunked`, then the next pipelined request), and its verdict
//! depends only on the byte sequence, never on how it was split into reads. Body bytes under
//! `Content-Length` and chunk data are skipped with one subtraction per call, never scanned.
//!
//! If the very first bytes of a connection are the HTTP/2 connection preface
//! (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), the validator switches to passthrough: HTTP/2 framing is
//! hyper's job.
//!
//! What is accepted, in short: up to [`MAX_LEADING_EMPTY_LINES`] CRLFs before a request line;
//! `token SP request-target SP HTTP/1.0|HTTP/1.1 CRLF`; header fields `token ":" OWS value OWS
//! CRLF` whose value holds no CTL other than HTAB (obs-text is allowed); then either exactly one
//! `Transfer-Encoding` line whose only coding is `chunked` (never on HTTP/1.0, never with
//! `Content-Length`), or exactly one `Content-Length` line holding 1 to 18 digits, or neither
//! (no body).
//!
//! This module owns the verdicts ([`FramingError`]), the byte classes and the state machine with
//! its request-line and header-field scanner; the chunked-body states are in `chunked.rs`.

use thiserror::Error;

mod chunked;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many empty lines (CRLF) are tolerated before a request line (RFC 9112 §2.2 says a server
/// SHOULD ignore at least one; some clients send one after a POST body).
pub const MAX_LEADING_EMPTY_LINES: u8 = 4;

/// Most digits accepted in a `Content-Length` value (10^18 - 1 fits in a `u64`).
const MAX_CL_DIGITS: u8 = 18;
/// Most hex digits accepted in a chunk size (exactly what fits in a `u64`).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;
/// Longest chunk-size line (size plus extensions) accepted, in bytes, CRLF excluded.
const MAX_CHUNK_LINE: u16 = 4096;

/// Why a connection's byte stream was rejected. Each kind is a request-smuggling shape or a
/// framing ambiguity; the connection must be closed without passing the offending bytes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    /// A LF not preceded by CR where a line ending is expected.
    #[error("bare LF line ending")]
    BareLf,
    /// A CR not followed by LF.
    #[error("bare CR")]
    BareCr,
    /// A header (or trailer) line starting with SP or HTAB (obsolete line folding).
    #[error("obsolete line folding")]
    ObsFold,
    /// A NUL byte in the request line, a header field or a chunk line.
    #[error("NUL byte in message head")]
    Nul,
    /// A control character other than HTAB (or DEL) in a header field value.
    #[error("control character in header field value")]
    CtlInHeader,
    /// A header line starting with `:`.
    #[error("empty header field name")]
    EmptyHeaderName,
    /// Whitespace between a header field name and the colon.
    #[error("whitespace before colon in header field")]
    SpaceBeforeColon,
    /// A header field name that is not a token, or a header line without a colon.
    #[error("invalid header field name")]
    InvalidHeaderName,
    /// A malformed request line (method not a token, bad spacing, CTL in the target, too many
    /// leading empty lines).
    #[error("malformed request line")]
    BadRequestLine,
    /// A protocol version other than exactly `HTTP/1.0` or `HTTP/1.1` (including `HTTP/2.0`
    /// anywhere but at the very start of the connection).
    #[error("unsupported HTTP version")]
    BadVersion,
    /// An HTTP/0.9 style request line (`GET /` with no version).
    #[error("HTTP/0.9 request")]
    Http09,
    /// Both `Content-Length` and `Transfer-Encoding` present.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    /// More than one `Content-Length` header line (even with equal values).
    #[error("duplicate Content-Length")]
    DuplicateContentLength,
    /// A `Content-Length` value that is not 1 to 18 digits with optional surrounding OWS.
    #[error("invalid Content-Length value")]
    BadContentLength,
    /// A `Transfer-Encoding` other than exactly one `chunked` coding on one header line, or any
    /// `Transfer-Encoding` on an HTTP/1.0 request.
    #[error("invalid or unsupported Transfer-Encoding")]
    BadTransferEncoding,
    /// A malformed chunked body: size not pure hex or too long, bad chunk extension, missing
    /// CRLF after chunk data, or a framing header (`Content-Length`, `Transfer-Encoding`) in the
    /// trailer section.
    #[error("malformed chunked body")]
    BadChunk,
    /// The request head (or trailer section) is longer than the configured maximum.
    #[error("request head too large")]
    HeadTooLarge,
}

impl FramingError {
    /// A short, stable, snake_case label for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::BareLf => "bare_lf",
            FramingError::BareCr => "bare_cr",
            FramingError::ObsFold => "obs_fold",
            FramingError::Nul => "nul",
            FramingError::CtlInHeader => "ctl_in_header",
            FramingError::EmptyHeaderName => "empty_header_name",
            FramingError::SpaceBeforeColon => "space_before_colon",
            FramingError::InvalidHeaderName => "invalid_header_name",
            FramingError::BadRequestLine => "bad_request_line",
            FramingError::BadVersion => "bad_version",
            FramingError::Http09 => "http09",
            FramingError::ContentLengthAndTransferEncoding => "cl_and_te",
            FramingError::DuplicateContentLength => "duplicate_content_length",
            FramingError::BadContentLength => "bad_content_length",
            FramingError::BadTransferEncoding => "bad_transfer_encoding",
            FramingError::BadChunk => "bad_chunk",
            FramingError::HeadTooLarge => "head_too_large",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Byte classes.

/// tchar (RFC 9110 §5.6.2).
const TCHAR: u8 = 1;
/// A byte allowed in a field value: SP, HTAB, VCHAR, obs-text.
const VALUE: u8 = 2;
/// A byte allowed in a request-target: VCHAR and obs-text (no SP, no CTL).
const TARGET: u8 = 4;
/// A hex digit.
const HEX: u8 = 8;
/// qdtext (RFC 9110 §5.6.4): HTAB, SP, VCHAR except `"` and `\`, obs-text.
const QDTEXT: u8 = 16;

const fn class_of(b: u8) -> u8 {
    let mut c = 0;
    let is_tchar = b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        );
    if is_tchar {
        c |= TCHAR;
    }
    let vchar_or_obs = matches!(b, 0x21..=0x7e | 0x80..=0xff);
    if vchar_or_obs || b == b' ' || b == b'\t' {
        c |= VALUE;
    }
    if vchar_or_obs {
        c |= TARGET;
    }
    if b.is_ascii_hexdigit() {
        c |= HEX;
    }
    if (vchar_or_obs || b == b' ' || b == b'\t') && b != b'"' && b != b'\\' {
        c |= QDTEXT;
    }
    c
}

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = class_of(i as u8);
        i += 1;
    }
    t
};

#[inline(always)]
fn is(b: u8, class: u8) -> bool {
    CLASS[b as usize] & class != 0
}

#[inline]
fn hex_val(b: u8) -> u64 {
    match b {
        b'0'..=b'9' => (b - b'0') as u64,
        b'a'..=b'f' => (b - b'a' + 10) as u64,
        b'A'..=b'F' => (b - b'A' + 10) as u64,
        _ => 0,
    }
}

/// The error for an unexpected byte on a line: LF and NUL get their own kinds everywhere, any
/// other byte gets the context's kind.
#[inline]
fn line_err(b: u8, other: FramingError) -> FramingError {
    match b {
        b'\n' => FramingError::BareLf,
        0 => FramingError::Nul,
        _ => other,
    }
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const CHUNKED: &[u8] = b"chunked";
const VERSION_PREFIX: &[u8] = b"HTTP/1.";

/// Candidate bits for the header-name matcher.
const MAYBE_CL: u8 = 1;
const MAYBE_TE: u8 = 2;

// ---------------------------------------------------------------------------------------------
// State machine.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the HTTP/2 preface at the start of the connection (`count` bytes matched).
    Preface,
    /// HTTP/2 (or anything else hyper owns): nothing more to check.
    Passthrough,
    // Request line.
    LineStart,
    LeadingLf,
    Method,
    TargetStart,
    Target,
    /// `count` bytes of `HTTP/1.x` matched.
    Version,
    RequestLineLf,
    // Header (and trailer) fields.
    FieldStart,
    Name,
    Value,
    ValueLf,
    HeadEndLf,
    // Content-Length body: `remaining` bytes left.
    Body,
    // Chunked body.
    ChunkSizeStart,
    ChunkSize,
    ExtNameStart,
    ExtName,
    ExtValStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    ExtAfterQuoted,
    ChunkSizeLf,
    ChunkData,
    ChunkDataCr,
    ChunkDataLf,
}

/// Which framing header the field being parsed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    ContentLength,
    TransferEncoding,
}

/// Validates the framing of the HTTP/1.x requests a client sends on one connection.
///
/// Create one per connection with [`FramingValidator::new`], then call
/// [`FramingValidator::feed`] with every piece of bytes read from the client, in order, before
/// handing them to hyper. The verdict is independent of how the stream is split into pieces.
/// The value is small (a few machine words) and never allocates.
#[derive(Debug, Clone)]
pub struct FramingValidator {
    /// Bytes left in the current `Content-Length` body or chunk; the chunk size being parsed.
    remaining: u64,
    /// Bytes of the current head (or trailer section) seen so far.
    head_len: usize,
    max_head: usize,
    state: State,
    error: Option<FramingError>,
    /// Multi-purpose small counter: preface bytes matched, version bytes matched, digits seen.
    count: u8,
    /// Empty lines seen before the current request line.
    empty_lines: u8,
    /// Header-name matcher: candidate bits and the name length so far (saturating).
    cand: u8,
    name_len: u8,
    field: Field,
    /// Sub-state inside a framing header value: 0 leading OWS, 1 in value, 2 trailing OWS.
    vstate: u8,
    /// Bytes of the current chunk-size line.
    chunk_line: u16,
    http10: bool,
    has_cl: bool,
    has_te: bool,
    in_trailer: bool,
}

impl FramingValidator {
    /// A validator for a new connection. `max_head` bounds the request line plus header section
    /// of each request (and each trailer section) in bytes; use the same value as hyper's
    /// `max_buf_size` (`server.max_header_bytes`).
    pub fn new(max_head: usize) -> Self {
        FramingValidator {
            remaining: 0,
            head_len: 0,
            max_head,
            state: State::Preface,
            error: None,
            count: 0,
            empty_lines: 0,
            cand: 0,
            name_len: 0,
            field: Field::Other,
            vstate: 0,
            chunk_line: 0,
            http10: false,
            has_cl: false,
            has_te: false,
            in_trailer: false,
        }
    }

    /// Feeds the next bytes read from the client. `Ok(())` if everything so far is acceptable
    /// (a request may still be incomplete). `Err` at the first violation; after an error, every
    /// later call returns the same error. The caller must then not hand the bytes of this call
    /// to the HTTP parser and should close the connection.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), FramingError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.run(bytes) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.error = Some(e);
                Err(e)
            }
        }
    }

    /// True once the connection was recognised as HTTP/2 (prior knowledge preface): every later
    /// byte is accepted unchecked, so the caller may stop feeding.
    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// The error this validator is stuck on, if any.
    pub fn error(&self) -> Option<FramingError> {
        self.error
    }

    fn start_request(&mut self) {
        self.state = State::LineStart;
        self.head_len = 0;
        self.empty_lines = 0;
        self.count = 0;
        self.http10 = false;
        self.has_cl = false;
        self.has_te = false;
        self.in_trailer = false;
        self.remaining = 0;
    }

    fn run(&mut self, bytes: &[u8]) -> Result<(), FramingError> {
        use FramingError as E;
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            // States that consume runs of bytes.
            match self.state {
                State::Passthrough => return Ok(()),
                State::Preface => {
                    let pos = self.count as usize;
                    if bytes[i] == H2_PREFACE[pos] {
                        i += 1;
                        if pos + 1 == H2_PREFACE.len() {
                            self.state = State::Passthrough;
                            return Ok(());
                        }
                        self.count += 1;
                    } else {
                        // Not HTTP/2: replay what matched through the HTTP/1 machine, then go
                        // on with this byte.
                        self.start_request();
                        self.run(&H2_PREFACE[..pos])?;
                    }
                    continue;
                }
                State::Body | State::ChunkData => {
                    let take = self.remaining.min((n - i) as u64);
                    i += take as usize;
                    self.remaining -= take;
                    if self.remaining == 0 {
                        if self.state == State::Body {
                            self.start_request();
                        } else {
                            self.state = State::ChunkDataCr;
                        }
                    }
                    continue;
                }
                State::Target | State::Value
                    if self.state == State::Target || self.field == Field::Other =>
                {
                    // Fast path over ordinary bytes, bounded by the head budget; the byte that
                    // stops the run goes through the per-byte machine below.
                    let class = if self.state == State::Target {
                        TARGET
                    } else {
                        VALUE
                    };
                    let end = n.min(i + (self.max_head - self.head_len));
                    let start = i;
                    while i < end && is(bytes[i], class) {
                        i += 1;
                    }
                    self.head_len += i - start;
                    if i == n {
                        return Ok(());
                    }
                }
                _ => {}
            }

            let b = bytes[i];
            i += 1;
            match self.state {
                State::LineStart
                | State::LeadingLf
                | State::Method
                | State::TargetStart
                | State::Target
                | State::Version
                | State::RequestLineLf
                | State::FieldStart
                | State::Name
                | State::Value
                | State::ValueLf
                | State::HeadEndLf => {
                    self.head_len += 1;
                    if self.head_len > self.max_head {
                        return Err(E::HeadTooLarge);
                    }
                }
                _ => {}
            }

            match self.state {
                // ---- request line ----
                State::LineStart => {
                    if b == b'\r' {
                        self.state = State::LeadingLf;
                    } else if is(b, TCHAR) {
                        self.state = State::Method;
                    } else {
                        return Err(line_err(b, E::BadRequestLine));
                    }
                }
                State::LeadingLf => {
                    if b != b'\n' {
                        return Err(E::BareCr);
                    }
                    self.empty_lines += 1;
                    if self.empty_lines > MAX_LEADING_EMPTY_LINES {
                        return Err(E::BadRequestLine);
                    }
                    self.state = State::LineStart;
                }
                State::Method => {
                    if b == b' ' {
                        self.state = State::TargetStart;
                    } else if !is(b, TCHAR) {
                        return Err(line_err(b, E::BadRequestLine));
                    }
                }
                State::TargetStart => {
                    if is(b, TARGET) {
                        self.state = State::Target;
                    } else {
                        return Err(line_err(b, E::BadRequestLine));
                    }
                }
                State::Target => {
                    if b == b' ' {
                        self.state = State::Version;
                        self.count = 0;
                    } else if b == b'\r' {
                        return Err(E::Http09);
                    } else if !is(b, TARGET) {
                        return Err(line_err(b, E::BadRequestLine));
                    }
                }
                State::Version => {
                    let pos = self.count as usize;
                    if pos < VERSION_PREFIX.len() && b == VERSION_PREFIX[pos] {
                        self.count += 1;
                    } else if pos == VERSION_PREFIX.len() && (b == b'0' || b == b'1') {
                        self.http10 = b == b'0';
                        self.count += 1;
                    } else if pos == VERSION_PREFIX.len() + 1 && b == b'\r' {
                        self.state = State::RequestLineLf;
                    } else {
                        return Err(line_err(b, E::BadVersion));
                    }
                }
                State::RequestLineLf => {
                    if b != b'\n' {
                        return Err(E::BareCr);
                    }
                    self.state = State::FieldStart;
                }

                // ---- header / trailer fields ----
                State::FieldStart => {
                    if b == b'\r' {
                        self.state = State::HeadEndLf;
                    } else if is(b, TCHAR) {
                        self.state = State::Name;
                        self.name_len = 0;
                        self.cand = MAYBE_CL | MAYBE_TE;
                        self.match_name(b);
                    } else {
                        return Err(match b {
                            b' ' | b'\t' => E::ObsFold,
                            b':' => E::EmptyHeaderName,
                            _ => line_err(b, E::InvalidHeaderName),
                        });
                    }
                }
                State::Name => {
                    if is(b, TCHAR) {
                        if self.cand != 0 {
                            self.match_name(b);
                        }
                    } else if b == b':' {
                        self.on_colon()?;
                        self.state = State::Value;
                    } else {
                        return Err(match b {
                            b' ' | b'\t' => E::SpaceBeforeColon,
                            _ => line_err(b, E::InvalidHeaderName),
                        });
                    }
                }
                State::Value => {
                    if b == b'\r' {
                        self.state = State::ValueLf;
                    } else if is(b, VALUE) {
                        match self.field {
                            Field::Other => {}
                            Field::ContentLength => self.cl_byte(b)?,
                            Field::TransferEncoding => self.te_byte(b)?,
                        }
                    } else {
                        return Err(line_err(b, E::CtlInHeader));
                    }
                }
                State::ValueLf => {
                    if b != b'\n' {
                        return Err(E::BareCr);
                    }
                    self.finish_field()?;
                    self.state = State::FieldStart;
                }
                State::HeadEndLf => {
                    if b != b'\n' {
                        return Err(E::BareCr);
                    }
                    if self.in_trailer {
                        self.start_request();
                    } else if self.has_te {
                        self.start_chunk_line();
                    } else if self.has_cl && self.remaining > 0 {
                        self.state = State::Body;
                    } else {
                        self.start_request();
                    }
                }

                // ---- chunked body (chunked.rs) ----
                State::ChunkSizeStart
                | State::ChunkSize
                | State::ExtNameStart
                | State::ExtName
                | State::ExtValStart
                | State::ExtToken
                | State::ExtQuoted
                | State::ExtQuotedPair
                | State::ExtAfterQuoted
                | State::ChunkSizeLf
                | State::ChunkDataCr
                | State::ChunkDataLf => self.chunk_byte(b)?,
                State::Preface | State::Passthrough | State::Body | State::ChunkData => {
                    // Handled above; unreachable in practice.
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn match_name(&mut self, b: u8) {
        let idx = self.name_len as usize;
        let lower = b.to_ascii_lowercase();
        if self.cand & MAYBE_CL != 0
            && (idx >= CONTENT_LENGTH.len() || CONTENT_LENGTH[idx] != lower)
        {
            self.cand &= !MAYBE_CL;
        }
        if self.cand & MAYBE_TE != 0
            && (idx >= TRANSFER_ENCODING.len() || TRANSFER_ENCODING[idx] != lower)
        {
            self.cand &= !MAYBE_TE;
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn on_colon(&mut self) -> Result<(), FramingError> {
        use FramingError as E;
        let len = self.name_len as usize;
        self.field = if self.cand & MAYBE_CL != 0 && len == CONTENT_LENGTH.len() {
            Field::ContentLength
        } else if self.cand & MAYBE_TE != 0 && len == TRANSFER_ENCODING.len() {
            Field::TransferEncoding
        } else {
            Field::Other
        };
        self.vstate = 0;
        self.count = 0;
        match self.field {
            Field::Other => {}
            _ if self.in_trailer => return Err(E::BadChunk),
            Field::ContentLength => {
                if self.has_te {
                    return Err(E::ContentLengthAndTransferEncoding);
                }
                if self.has_cl {
                    return Err(E::DuplicateContentLength);
                }
                self.has_cl = true;
                self.remaining = 0;
            }
            Field::TransferEncoding => {
                if self.has_cl {
                    return Err(E::ContentLengthAndTransferEncoding);
                }
                if self.has_te || self.http10 {
                    return Err(E::BadTransferEncoding);
                }
                self.has_te = true;
            }
        }
        Ok(())
    }

    /// One byte (already known to be a legal field-value byte) of a `Content-Length` value.
    #[inline]
    fn cl_byte(&mut self, b: u8) -> Result<(), FramingError> {
        match (self.vstate, b) {
            (0 | 2, b' ' | b'\t') => {}
            (1, b' ' | b'\t') => self.vstate = 2,
            (0 | 1, b'0'..=b'9') => {
                self.vstate = 1;
                self.count += 1;
                if self.count > MAX_CL_DIGITS {
                    return Err(FramingError::BadContentLength);
                }
                self.remaining = self.remaining * 10 + (b - b'0') as u64;
            }
            _ => return Err(FramingError::BadContentLength),
        }
        Ok(())
    }

    /// One byte (already known to be a legal field-value byte) of a `Transfer-Encoding` value.
    #[inline]
    fn te_byte(&mut self, b: u8) -> Result<(), FramingError> {
        let pos = self.count as usize;
        match (self.vstate, b) {
            (0 | 2, b' ' | b'\t') => {}
            (1, b' ' | b'\t') if pos == CHUNKED.len() => self.vstate = 2,
            (0 | 1, _) if pos < CHUNKED.len() && b.to_ascii_lowercase() == CHUNKED[pos] => {
                self.vstate = 1;
                self.count += 1;
            }
            _ => return Err(FramingError::BadTransferEncoding),
        }
        Ok(())
    }

    /// End of a field line (CRLF seen): a framing header must hold a complete value.
    fn finish_field(&mut self) -> Result<(), FramingError> {
        let field = self.field;
        self.field = Field::Other;
        match field {
            Field::Other => Ok(()),
            Field::ContentLength if self.vstate == 0 => Err(FramingError::BadContentLength),
            Field::ContentLength => Ok(()),
            Field::TransferEncoding if self.count as usize == CHUNKED.len() => Ok(()),
            Field::TransferEncoding => Err(FramingError::BadTransferEncoding),
        }
    }
}

#[cfg(test)]
mod tests;
