use super::*;
use FramingError as E;

const MAX: usize = 16 << 10;

/// Tiny deterministic PRNG (xorshift64*), so the tests never depend on a crate's algorithm.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Feeds `input` cut at the (sorted) offsets `cuts`; returns the first error. Checks that the
/// error is sticky: every later call (including an empty one) returns it again.
fn run_cuts(input: &[u8], cuts: &[usize], max_head: usize) -> Result<(), FramingError> {
    let mut v = FramingValidator::new(max_head);
    let mut first = Ok(());
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let r = v.feed(&input[prev..c]);
        prev = c;
        match (first, r) {
            (Ok(()), r) => first = r,
            (Err(e), r) => assert_eq!(r, Err(e), "error not sticky"),
        }
    }
    if let Err(e) = first {
        assert_eq!(v.feed(b""), Err(e));
        assert_eq!(v.feed(b"GET / HTTP/1.1\r\n\r\n"), Err(e));
        assert_eq!(v.error(), Some(e));
    }
    first
}

fn bytewise(input: &[u8], max_head: usize) -> Result<(), FramingError> {
    let cuts: Vec<usize> = (1..input.len()).collect();
    run_cuts(input, &cuts, max_head)
}

fn random_cuts(input: &[u8], rng: &mut Rng, pieces: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..pieces.saturating_sub(1))
        .map(|_| rng.below(input.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts
}

/// The verdict for `input`, asserting it is the same fed whole, byte by byte, cut at every
/// single offset, and cut at random offsets.
fn check_with(input: &[u8], max_head: usize) -> Result<(), FramingError> {
    let whole = run_cuts(input, &[], max_head);
    assert_eq!(bytewise(input, max_head), whole, "byte-by-byte differs");
    for c in 0..=input.len() {
        assert_eq!(
            run_cuts(input, &[c], max_head),
            whole,
            "split at {c} differs"
        );
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ input.len() as u64);
    for pieces in [2, 3, 5] {
        let cuts = random_cuts(input, &mut rng, pieces);
        assert_eq!(
            run_cuts(input, &cuts, max_head),
            whole,
            "cuts {cuts:?} differ"
        );
    }
    whole
}

fn check(input: &[u8]) -> Result<(), FramingError> {
    check_with(input, MAX)
}

/// Feeds `input` whole and says whether the validator ended exactly between two requests.
fn ends_at_boundary(input: &[u8]) -> bool {
    let mut v = FramingValidator::new(MAX);
    v.feed(input).is_ok() && v.state == State::LineStart && v.empty_lines == 0
}

fn req(head_fields: &str, body: &str) -> Vec<u8> {
    format!("POST /x HTTP/1.1\r\nHost: a\r\n{head_fields}\r\n{body}").into_bytes()
}

// ---- the cases list ----

#[test]
fn violations_are_rejected_with_their_kind_at_every_split() {
    let cases: Vec<(&str, Vec<u8>, FramingError)> = vec![
        (
            "CL then TE",
            req(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            E::ContentLengthAndTransferEncoding,
        ),
        (
            "TE then CL",
            req(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            E::ContentLengthAndTransferEncoding,
        ),
        (
            "xchunked",
            req("Transfer-Encoding: xchunked\r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "chunkedx",
            req("Transfer-Encoding: chunkedx\r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "space before colon on TE",
            req("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            E::SpaceBeforeColon,
        ),
        (
            "gzip",
            req("Transfer-Encoding: gzip\r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "gzip, chunked",
            req("Transfer-Encoding: gzip, chunked\r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "chunked, chunked",
            req("Transfer-Encoding: chunked, chunked\r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "chunked;param",
            req("Transfer-Encoding: chunked;x=1\r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "empty TE",
            req("Transfer-Encoding: \r\n", ""),
            E::BadTransferEncoding,
        ),
        (
            "two TE lines",
            req(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "",
            ),
            E::BadTransferEncoding,
        ),
        (
            "TE on HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            E::BadTransferEncoding,
        ),
        (
            "two different CLs",
            req("Content-Length: 5\r\nContent-Length: 6\r\n", "hello"),
            E::DuplicateContentLength,
        ),
        (
            "two equal CLs",
            req("Content-Length: 5\r\ncontent-length: 5\r\n", "hello"),
            E::DuplicateContentLength,
        ),
        (
            "CL list 0, 0",
            req("Content-Length: 0, 0\r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL +0",
            req("Content-Length: +0\r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL -1",
            req("Content-Length: -1\r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL 1 2",
            req("Content-Length: 1 2\r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL hex",
            req("Content-Length: 0x10\r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL empty",
            req("Content-Length:\r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL blank",
            req("Content-Length:  \t \r\n", ""),
            E::BadContentLength,
        ),
        (
            "CL 19 digits",
            req("Content-Length: 1000000000000000000\r\n", ""),
            E::BadContentLength,
        ),
        (
            "chunk size 0x0",
            req("Transfer-Encoding: chunked\r\n", "0x0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk size 1 zz",
            req("Transfer-Encoding: chunked\r\n", "1 zz\r\nA\r\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk size with BWS before ext",
            req("Transfer-Encoding: chunked\r\n", "1 ;a\r\nA\r\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk size empty",
            req("Transfer-Encoding: chunked\r\n", "\r\n"),
            E::BadChunk,
        ),
        (
            "chunk size 17 hex digits",
            req(
                "Transfer-Encoding: chunked\r\n",
                "00000000000000001\r\nA\r\n",
            ),
            E::BadChunk,
        ),
        (
            "chunk size negative",
            req("Transfer-Encoding: chunked\r\n", "-1\r\n"),
            E::BadChunk,
        ),
        (
            "missing CRLF after chunk data",
            req("Transfer-Encoding: chunked\r\n", "3\r\nabcd\r\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "bare LF after chunk data",
            req("Transfer-Encoding: chunked\r\n", "3\r\nabc\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk ext without name",
            req("Transfer-Encoding: chunked\r\n", "1;\r\nA\r\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk ext empty value",
            req("Transfer-Encoding: chunked\r\n", "1;a=\r\nA\r\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk ext unterminated quote",
            req(
                "Transfer-Encoding: chunked\r\n",
                "1;a=\"x\r\nA\r\n0\r\n\r\n",
            ),
            E::BadChunk,
        ),
        (
            "chunk ext bad token",
            req("Transfer-Encoding: chunked\r\n", "1;a(b\r\nA\r\n0\r\n\r\n"),
            E::BadChunk,
        ),
        (
            "chunk size bare LF",
            req("Transfer-Encoding: chunked\r\n", "1\nA\r\n0\r\n\r\n"),
            E::BareLf,
        ),
        (
            "Content-Length in trailer",
            req(
                "Transfer-Encoding: chunked\r\n",
                "0\r\nContent-Length: 5\r\n\r\nhello",
            ),
            E::BadChunk,
        ),
        (
            "Transfer-Encoding in trailer",
            req(
                "Transfer-Encoding: chunked\r\n",
                "0\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            E::BadChunk,
        ),
        (
            "bare LF in trailer",
            req("Transfer-Encoding: chunked\r\n", "0\r\nX-T: 1\n\r\n"),
            E::BareLf,
        ),
        (
            "obs-fold in trailer",
            req(
                "Transfer-Encoding: chunked\r\n",
                "0\r\nX-T: 1\r\n 2\r\n\r\n",
            ),
            E::ObsFold,
        ),
        (
            "bare LF line endings",
            b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
            E::BareLf,
        ),
        (
            "bare LF after a header",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n".to_vec(),
            E::BareLf,
        ),
        (
            "bare LF ends the head",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n".to_vec(),
            E::BareLf,
        ),
        (
            "bare LF as leading empty line",
            b"\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            E::BareLf,
        ),
        (
            "bare CR inside a header",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n".to_vec(),
            E::BareCr,
        ),
        (
            "bare CR ends the head",
            b"GET / HTTP/1.1\r\nHost: a\r\n\rX".to_vec(),
            E::BareCr,
        ),
        (
            "bare CR after request line",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n".to_vec(),
            E::BareCr,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n".to_vec(),
            E::ObsFold,
        ),
        (
            "obs-fold with tab",
            b"GET / HTTP/1.1\r\nX-A: b\r\n\tc\r\n\r\n".to_vec(),
            E::ObsFold,
        ),
        (
            "whitespace before first header",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n".to_vec(),
            E::ObsFold,
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nX-A: b\0c\r\n\r\n".to_vec(),
            E::Nul,
        ),
        (
            "NUL in the target",
            b"GET /\0 HTTP/1.1\r\n\r\n".to_vec(),
            E::Nul,
        ),
        (
            "CTL in a header value",
            b"GET / HTTP/1.1\r\nX-A: b\x01c\r\n\r\n".to_vec(),
            E::CtlInHeader,
        ),
        (
            "DEL in a header value",
            b"GET / HTTP/1.1\r\nX-A: b\x7f\r\n\r\n".to_vec(),
            E::CtlInHeader,
        ),
        (
            "empty header name",
            b"GET / HTTP/1.1\r\n: value\r\n\r\n".to_vec(),
            E::EmptyHeaderName,
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n".to_vec(),
            E::SpaceBeforeColon,
        ),
        (
            "tab before colon",
            b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n".to_vec(),
            E::SpaceBeforeColon,
        ),
        (
            "CL with space before colon",
            req("Content-Length : 5\r\n", "hello"),
            E::SpaceBeforeColon,
        ),
        (
            "non-token header name",
            b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n".to_vec(),
            E::InvalidHeaderName,
        ),
        (
            "header line without colon",
            b"GET / HTTP/1.1\r\nHost\r\n\r\n".to_vec(),
            E::InvalidHeaderName,
        ),
        (
            "space in header name",
            b"GET / HTTP/1.1\r\nX A: b\r\n\r\n".to_vec(),
            E::SpaceBeforeColon,
        ),
        (
            "leading space before method",
            b" GET / HTTP/1.1\r\n\r\n".to_vec(),
            E::BadRequestLine,
        ),
        (
            "double space after method",
            b"GET  / HTTP/1.1\r\n\r\n".to_vec(),
            E::BadRequestLine,
        ),
        (
            "non-token method",
            b"GE(T / HTTP/1.1\r\n\r\n".to_vec(),
            E::BadRequestLine,
        ),
        ("method only", b"GET\r\n\r\n".to_vec(), E::BadRequestLine),
        (
            "CTL in target",
            b"GET /a\x01b HTTP/1.1\r\n\r\n".to_vec(),
            E::BadRequestLine,
        ),
        (
            "too many leading empty lines",
            b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            E::BadRequestLine,
        ),
        (
            "space in target",
            b"GET /a b HTTP/1.1\r\n\r\n".to_vec(),
            E::BadVersion,
        ),
        (
            "HTTP/1.2",
            b"GET / HTTP/1.2\r\n\r\n".to_vec(),
            E::BadVersion,
        ),
        (
            "lowercase version",
            b"GET / http/1.1\r\n\r\n".to_vec(),
            E::BadVersion,
        ),
        (
            "trailing space after version",
            b"GET / HTTP/1.1 \r\n\r\n".to_vec(),
            E::BadVersion,
        ),
        (
            "HTTP/2.0 request line (not a preface)",
            b"GET / HTTP/2.0\r\n\r\n".to_vec(),
            E::BadVersion,
        ),
        (
            "preface after an HTTP/1 request",
            [b"GET / HTTP/1.1\r\n\r\n".as_slice(), H2_PREFACE].concat(),
            E::BadVersion,
        ),
        (
            "broken preface",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
            E::BadVersion,
        ),
        ("HTTP/0.9", b"GET /\r\n".to_vec(), E::Http09),
        (
            "second pipelined request bad",
            [
                req("Content-Length: 3\r\n", "abc").as_slice(),
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            ]
            .concat(),
            E::DuplicateContentLength,
        ),
    ];
    for (name, input, want) in &cases {
        assert_eq!(check(input), Err(*want), "case {name:?}");
    }
}

#[test]
fn head_too_large() {
    let head = b"GET /aaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: example\r\nX-Long: 0123456789\r\n\r\n";
    let n = head.len();
    assert_eq!(check_with(head, n), Ok(()));
    assert_eq!(check_with(head, n - 1), Err(E::HeadTooLarge));
    assert_eq!(check_with(head, 20), Err(E::HeadTooLarge));
    // The limit is per request: two heads of n bytes each pass with max_head = n.
    let two = [head.as_slice(), head.as_slice()].concat();
    assert_eq!(check_with(&two, n), Ok(()));
    // And per trailer section.
    let chunked = req(
        "Transfer-Encoding: chunked\r\n",
        "0\r\nX-Trailer: 0123456789012345678901234567890123456789\r\n\r\n",
    );
    assert_eq!(check_with(&chunked, 50), Err(E::HeadTooLarge));
    assert_eq!(check_with(&chunked, 100), Ok(()));
}

#[test]
fn chunk_line_too_long_is_rejected() {
    let ext = "a".repeat(5000);
    let body = format!("1;{ext}\r\nA\r\n0\r\n\r\n");
    let input = req("Transfer-Encoding: chunked\r\n", &body);
    assert_eq!(run_cuts(&input, &[], MAX), Err(E::BadChunk));
    assert_eq!(bytewise(&input, MAX), Err(E::BadChunk));
}

// ---- valid traffic ----

#[test]
fn valid_requests_are_accepted() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "GET",
            b"GET /index.html?q=1 HTTP/1.1\r\nHost: portal\r\nAccept: */*\r\n\r\n".to_vec(),
        ),
        ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "POST with CL",
            req(
                "Content-Type: text/plain\r\nContent-Length: 11\r\n",
                "hello world",
            ),
        ),
        ("CL zero", req("Content-Length: 0\r\n", "")),
        ("CL with OWS", req("Content-Length: \t 5 \t\r\n", "hello")),
        ("CL no OWS", req("Content-Length:5\r\n", "hello")),
        ("CL leading zeros", req("Content-Length: 005\r\n", "hello")),
        ("CL uppercase name", req("CONTENT-LENGTH: 5\r\n", "hello")),
        (
            "CL 18 digits (incomplete body)",
            req("Content-Length: 999999999999999999\r\n", "ab"),
        ),
        (
            "chunked with extensions and trailers",
            req(
                "Transfer-Encoding: Chunked \r\n",
                "5;name=val;q=\"a \\\"b\\\" \\\t\";flag\r\nhello\r\n\
                 A\r\n0123456789\r\n\
                 1a\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                 0;last\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n",
            ),
        ),
        (
            "chunked, uppercase hex and max digits",
            req(
                "transfer-encoding:chunked\r\n",
                "0000000000000003\r\nabc\r\nB\r\n0123456789a\r\n0\r\n\r\n",
            ),
        ),
        (
            "look-alike header names are ordinary fields",
            b"GET / HTTP/1.1\r\nContent-Lengthx: a, b\r\nX-Content-Length: 1, 2\r\n\
              Transfer-Encodings: gzip\r\nContent-Lengt: x\r\nTransfer-Encoding-X: y\r\n\
              Content-Type: text/html\r\n\r\n"
                .to_vec(),
        ),
        (
            "obs-text in a value and the target",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nX-Name: Jos\xc3\xa9\r\nX-Empty:\r\n\r\n".to_vec(),
        ),
        (
            "leading empty lines",
            b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "empty line after a body",
            [
                req("Content-Length: 2\r\n", "ab\r\n").as_slice(),
                b"GET / HTTP/1.1\r\n\r\n",
            ]
            .concat(),
        ),
        (
            "Expect: 100-continue, body later",
            req("Expect: 100-continue\r\nContent-Length: 4\r\n", "data"),
        ),
        (
            "body under CL containing a smuggled request is just body",
            req(
                "Content-Length: 35\r\n",
                "\r\n\r\nGET /smuggled HTTP/1.1\r\nX: \0\n\r\n",
            ),
        ),
    ];
    for (name, input) in &cases {
        assert_eq!(check(input), Ok(()), "case {name:?}");
    }
}

#[test]
fn smuggled_request_in_body_is_body() {
    let body = "\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: evil\r\n\r\n";
    let input = req(&format!("Content-Length: {}\r\n", body.len()), body);
    assert_eq!(check(&input), Ok(()));
    assert!(ends_at_boundary(&input));
    // One byte short: still inside the body, so the next request line would be body too.
    let short = req(&format!("Content-Length: {}\r\n", body.len() + 1), body);
    let mut v = FramingValidator::new(MAX);
    assert_eq!(v.feed(&short), Ok(()));
    assert_eq!(v.state, State::Body);
    assert_eq!(v.remaining, 1);
}

#[test]
fn pipelined_requests_with_hostile_bodies() {
    let b1 = "line1\nline2\n\r\n\r\nGET /x HTTP/1.1\n\n";
    let b2 = "\0\x01\x7f\r\r\n : \r\n\r\n";
    let chunk = "Transfer-Encoding: chunked\r\n\n\r\n\r\n";
    let input = [
        req(&format!("Content-Length: {}\r\n", b1.len()), b1),
        req(&format!("Content-Length: {}\r\n", b2.len()), b2),
        req(
            "Transfer-Encoding: chunked\r\n",
            &format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()),
        ),
    ]
    .concat();
    assert_eq!(check(&input), Ok(()));
    assert!(ends_at_boundary(&input));
    // Three requests, then a fourth head arriving later on the same connection.
    let mut v = FramingValidator::new(MAX);
    assert_eq!(v.feed(&input), Ok(()));
    assert_eq!(v.feed(b"GET /four HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
    assert_eq!(v.state, State::LineStart);
    assert_eq!(
        v.feed(b"GET /five HTTP/1.1\nHost: a\r\n\r\n"),
        Err(E::BareLf)
    );
}

#[test]
fn h2_preface_switches_to_passthrough() {
    let mut input = H2_PREFACE.to_vec();
    // An HTTP/2 SETTINGS frame and bytes that would be violations in HTTP/1.
    input.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\n\r\0 :\r\n");
    assert_eq!(check(&input), Ok(()));
    let mut v = FramingValidator::new(MAX);
    assert_eq!(v.feed(&H2_PREFACE[..10]), Ok(()));
    assert!(!v.is_passthrough());
    assert_eq!(v.feed(&H2_PREFACE[10..]), Ok(()));
    assert!(v.is_passthrough());
    assert_eq!(v.feed(b"\n\n\0"), Ok(()));
}

#[test]
fn partial_preface_then_http1_is_validated_as_http1() {
    // Matches the preface for 12 bytes, then is an ordinary HTTP/1.1 request.
    let input = b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(check(input), Ok(()));
    assert!(ends_at_boundary(input));
    let input = b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(check(input), Ok(()));
    assert!(ends_at_boundary(input));
    // The replayed prefix is checked too.
    assert_eq!(check(b"PRI * HTTP/1.1\nHost: a\r\n\r\n"), Err(E::BareLf));
    assert_eq!(check(b"P\n"), Err(E::BareLf));
}

#[test]
fn incomplete_input_is_ok_so_far() {
    let full = req(
        "Transfer-Encoding: chunked\r\n",
        "5;a=\"b\"\r\nhello\r\n0\r\nX: y\r\n\r\n",
    );
    for end in 0..full.len() {
        assert_eq!(check(&full[..end]), Ok(()), "prefix of {end} bytes");
        assert!(!ends_at_boundary(&full[..end]) || end == 0);
    }
    assert!(ends_at_boundary(&full));
}

#[test]
fn content_length_body_is_skipped_not_scanned() {
    let body = vec![0u8; 100_000];
    let mut input = req("Content-Length: 100000\r\n", "").to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(run_cuts(&input, &[], MAX), Ok(()));
    assert_eq!(run_cuts(&input, &[70, 5000, 50_000, 100_060], MAX), Ok(()));
    assert!(ends_at_boundary(&input));
}

#[test]
fn reasons_are_distinct_snake_case() {
    let all = [
        E::BareLf,
        E::BareCr,
        E::ObsFold,
        E::Nul,
        E::CtlInHeader,
        E::EmptyHeaderName,
        E::SpaceBeforeColon,
        E::InvalidHeaderName,
        E::BadRequestLine,
        E::BadVersion,
        E::Http09,
        E::ContentLengthAndTransferEncoding,
        E::DuplicateContentLength,
        E::BadContentLength,
        E::BadTransferEncoding,
        E::BadChunk,
        E::HeadTooLarge,
    ];
    let mut seen = std::collections::HashSet::new();
    for e in all {
        let r = e.reason();
        assert!(seen.insert(r), "duplicate reason {r}");
        assert!(r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn validator_is_small() {
    assert!(std::mem::size_of::<FramingValidator>() <= 48);
}

// ---- split invariance over many inputs ----

fn seeds() -> Vec<Vec<u8>> {
    vec![
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        req("Content-Length: 5\r\n", "hello"),
        req(
            "Transfer-Encoding: chunked\r\n",
            "5;a=\"q\\\"\";b\r\nhello\r\n0\r\nX: y\r\n\r\n",
        ),
        req(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        req("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
        b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
        b"\r\nGET /x HTTP/1.0\r\nX: a\r\n b\r\n\r\n".to_vec(),
        H2_PREFACE.to_vec(),
        [
            req("Content-Length: 3\r\n", "a\nb").as_slice(),
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        .concat(),
        b"GET /\r\n".to_vec(),
    ]
}

const INTERESTING: &[u8] = b"\r\n\r\n \t:;=\"\\,0019aAfFxX-+\0\x7f\x80\xff";

fn mutate(input: &mut Vec<u8>, rng: &mut Rng, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            2 if len > 0 => {
                input.remove(rng.below(len));
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            5 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
        }
    }
}

#[test]
fn split_invariance_over_20k_mutated_inputs() {
    let seeds = seeds();
    let mut rng = Rng(0x00C0_FFEE_D00D_F00D);
    let mut verdicts = std::collections::HashMap::new();
    for _ in 0..20_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut input, &mut rng, &seeds);
        let max_head = if rng.below(8) == 0 { 24 } else { MAX };
        let whole = run_cuts(&input, &[], max_head);
        assert_eq!(bytewise(&input, max_head), whole, "input {input:?}");
        for pieces in [2, 4] {
            let cuts = random_cuts(&input, &mut rng, pieces);
            assert_eq!(
                run_cuts(&input, &cuts, max_head),
                whole,
                "input {input:?} cuts {cuts:?}"
            );
        }
        *verdicts
            .entry(whole.map_err(|e| e.reason()))
            .or_insert(0u32) += 1;
    }
    // The mutator must exercise both verdicts and many error kinds, or the test proves little.
    assert!(
        verdicts.get(&Ok(())).copied().unwrap_or(0) > 1000,
        "{verdicts:?}"
    );
    assert!(verdicts.len() >= 14, "{verdicts:?}");
}

/// Builds a random, valid pipelined request sequence.
fn random_valid(rng: &mut Rng) -> Vec<u8> {
    const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "X-CUSTOM!"];
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        for _ in 0..rng.below(2) {
            out.extend_from_slice(b"\r\n");
        }
        let method = METHODS[rng.below(METHODS.len())];
        let version = if rng.below(4) == 0 { "1.0" } else { "1.1" };
        out.extend_from_slice(format!("{method} /p/{} HTTP/{version}\r\n", rng.next()).as_bytes());
        for h in 0..rng.below(6) {
            let ows = [" ", "", "\t", "  "][rng.below(4)];
            out.extend_from_slice(format!("X-H{h}:{ows}v{}\t{ows}\r\n", rng.next()).as_bytes());
        }
        let body: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
        match rng.below(3) {
            0 if version == "1.1" => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for piece in body.chunks(1 + rng.below(10)) {
                    let ext = if rng.below(3) == 0 { ";e=\"x y\"" } else { "" };
                    out.extend_from_slice(format!("{:X}{ext}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if rng.below(2) == 0 {
                    out.extend_from_slice(b"X-Trailer: t\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
            1 => {
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
            }
            _ => out.extend_from_slice(b"\r\n"),
        }
    }
    out
}

#[test]
fn random_valid_pipelines_are_accepted_at_any_split() {
    let mut rng = Rng(0x5EED_0FA1_1000);
    for _ in 0..2000 {
        let input = random_valid(&mut rng);
        assert_eq!(run_cuts(&input, &[], MAX), Ok(()), "{input:?}");
        assert!(ends_at_boundary(&input), "{input:?}");
        let cuts = random_cuts(&input, &mut rng, 4);
        assert_eq!(run_cuts(&input, &cuts, MAX), Ok(()), "{input:?} {cuts:?}");
        assert_eq!(bytewise(&input, MAX), Ok(()), "{input:?}");
    }
}
