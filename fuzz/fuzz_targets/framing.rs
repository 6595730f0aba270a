//! Differential fuzz target for `anticamera::framing`: the verdict must not depend on how the
//! byte stream is split into reads. The first two input bytes choose a split point and a max
//! head size; the rest is the client's byte stream. Compared: fed whole, fed in two pieces at
//! the chosen point, and fed one byte at a time. Errors must also be sticky.
#![no_main]

use anticamera::framing::{FramingError, FramingValidator};
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], cuts: &[usize], max_head: usize) -> Result<(), FramingError> {
    let mut v = FramingValidator::new(max_head);
    let mut first = Ok(());
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let r = v.feed(&data[prev..c]);
        prev = c;
        match first {
            Ok(()) => first = r,
            Err(e) => assert_eq!(r, Err(e), "error not sticky"),
        }
    }
    first
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (ctl, data) = input.split_at(2);
    let max_head = if ctl[1] & 1 == 0 {
        16 << 10
    } else {
        16 + ctl[1] as usize
    };
    let split = if data.is_empty() {
        0
    } else {
        ctl[0] as usize % (data.len() + 1)
    };
    let whole = run(data, &[], max_head);
    assert_eq!(run(data, &[split], max_head), whole, "split at {split}");
    let every: Vec<usize> = (1..data.len()).collect();
    assert_eq!(run(data, &every, max_head), whole, "byte at a time");
});
