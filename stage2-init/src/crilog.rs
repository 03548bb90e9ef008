//! The CRI log format (`spec::stdio::LogFormat::Cri`), as kubelet reads it
//! and containerd writes it: one line per line of output,
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout F a whole line
//! 2016-10-06T00:17:09.669794202Z stderr P the first 16 KiB of a longer one
//! ```
//!
//! `F` ends a line; `P` is a part of one, written when a line grows past
//! [`CRI_LINE_MAX`] bytes or its stream ends without a newline. Each stream
//! keeps at most one unfinished line (its [`Splitter`]), so memory stays
//! bounded whatever the app writes.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

pub use spec::stdio::CRI_LINE_MAX;

/// Which of an app's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One stream's unfinished line between reads.
#[derive(Debug)]
pub struct Splitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl Splitter {
    pub fn new(stream: Stream) -> Splitter {
        Splitter { stream, pending: Vec::new() }
    }

    /// Writes every line `data` completes (and every full [`CRI_LINE_MAX`]
    /// part) to `out`, stamped `now`; keeps the rest for the next call.
    pub fn feed(&mut self, mut data: &[u8], now: SystemTime, out: &mut impl Write) -> io::Result<()> {
        let stamp = rfc3339_nanos(now);
        while !data.is_empty() {
            let room = CRI_LINE_MAX - self.pending.len();
            // A newline right after a full line still ends it whole.
            match data.iter().take(room + 1).position(|&b| b == b'\n') {
                Some(n) => {
                    self.emit(&stamp, &data[..n], 'F', out)?;
                    data = &data[n + 1..];
                }
                None if data.len() >= room => {
                    self.emit(&stamp, &data[..room], 'P', out)?;
                    data = &data[room..];
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// The stream ended: what is left of its last line, as a part.
    pub fn finish(&mut self, now: SystemTime, out: &mut impl Write) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.emit(&rfc3339_nanos(now), &[], 'P', out)
    }

    /// Writes `pending + tail` as one line tagged `tag`, in one write so
    /// lines of two streams never interleave inside one another.
    fn emit(&mut self, stamp: &str, tail: &[u8], tag: char, out: &mut impl Write) -> io::Result<()> {
        let mut line = Vec::with_capacity(stamp.len() + 10 + self.pending.len() + tail.len());
        line.extend_from_slice(stamp.as_bytes());
        line.push(b' ');
        line.extend_from_slice(self.stream.as_str().as_bytes());
        line.push(b' ');
        line.push(tag as u8);
        line.push(b' ');
        line.append(&mut self.pending);
        line.extend_from_slice(tail);
        line.push(b'\n');
        // An unfinished line no longer than usual keeps its buffer; a
        // long one gives the memory back.
        if self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
        out.write_all(&line)
    }
}

/// The calendar date and time of `secs` since the epoch (UTC): year,
/// month, day, hour, minute, second.
pub fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (>= 0).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// RFC 3339 in UTC with nanoseconds, always nine digits (as containerd
/// writes CRI logs), e.g. `2024-05-01T12:00:00.250000000Z`.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil(since.as_secs());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z", since.subsec_nanos())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    /// The lines written, each split into its four fields.
    fn lines(out: &[u8]) -> Vec<(String, String, String, String)> {
        String::from_utf8_lossy(out)
            .split_terminator('\n')
            .map(|l| {
                let f: Vec<&str> = l.splitn(4, ' ').collect();
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned(), f.get(3).copied().unwrap_or("").to_owned())
            })
            .collect()
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(at(1_714_564_800_250_000_001)), "2024-05-01T12:00:00.250000001Z");
        assert_eq!(rfc3339_nanos(at(951_782_400_000_000_000)), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(at(4_102_444_799_999_999_999)), "2099-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn whole_lines_are_f_and_a_split_line_is_joined() {
        let mut out = Vec::new();
        let mut s = Splitter::new(Stream::Stdout);
        s.feed(b"hello\nwor", at(1), &mut out).unwrap();
        s.feed(b"ld\n\nend", at(2), &mut out).unwrap();
        let got = lines(&out);
        let texts: Vec<(&str, &str, &str)> = got.iter().map(|l| (l.1.as_str(), l.2.as_str(), l.3.as_str())).collect();
        assert_eq!(texts, [("stdout", "F", "hello"), ("stdout", "F", "world"), ("stdout", "F", "")]);
        assert_eq!(got[0].0, "1970-01-01T00:00:00.000000001Z");
        assert_eq!(got[1].0, "1970-01-01T00:00:00.000000002Z", "a line is stamped when it is complete");
        // The stream ends without a newline: the rest is a part.
        s.finish(at(3), &mut out).unwrap();
        let last = lines(&out).pop().unwrap();
        assert_eq!((last.1.as_str(), last.2.as_str(), last.3.as_str()), ("stdout", "P", "end"));
        // Nothing pending: finishing writes nothing.
        let before = out.len();
        s.finish(at(4), &mut out).unwrap();
        assert_eq!(out.len(), before);
    }

    #[test]
    fn long_lines_are_cut_into_parts_of_16_kib() {
        let mut out = Vec::new();
        let mut s = Splitter::new(Stream::Stderr);
        let long = vec![b'x'; CRI_LINE_MAX * 2 + 10];
        // Fed in odd pieces: the parts do not depend on how reads fall.
        for piece in long.chunks(1000) {
            s.feed(piece, at(1), &mut out).unwrap();
        }
        s.feed(b"\nnext\n", at(1), &mut out).unwrap();
        let got = lines(&out);
        let shape: Vec<(&str, &str, usize)> = got.iter().map(|l| (l.1.as_str(), l.2.as_str(), l.3.len())).collect();
        assert_eq!(
            shape,
            [("stderr", "P", CRI_LINE_MAX), ("stderr", "P", CRI_LINE_MAX), ("stderr", "F", 10), ("stderr", "F", 4)]
        );
        // A line of exactly the limit is whole.
        let mut out = Vec::new();
        let mut exact = vec![b'y'; CRI_LINE_MAX];
        exact.push(b'\n');
        Splitter::new(Stream::Stdout).feed(&exact, at(1), &mut out).unwrap();
        let got = lines(&out);
        assert_eq!((got.len(), got[0].2.as_str(), got[0].3.len()), (1, "F", CRI_LINE_MAX));
    }

    #[test]
    fn both_streams_into_one_file() {
        let mut out = Vec::new();
        let (mut o, mut e) = (Splitter::new(Stream::Stdout), Splitter::new(Stream::Stderr));
        o.feed(b"to ", at(1), &mut out).unwrap();
        e.feed(b"oops\n", at(2), &mut out).unwrap();
        o.feed(b"stdout\n", at(3), &mut out).unwrap();
        let got: Vec<String> = lines(&out).into_iter().map(|l| format!("{} {} {}", l.1, l.2, l.3)).collect();
        assert_eq!(got, ["stderr F oops", "stdout F to stdout"]);
        // Bytes that are not UTF-8 pass through untouched.
        let mut out = Vec::new();
        o.feed(b"\xff\xfe\n", at(4), &mut out).unwrap();
        assert!(out.ends_with(b" stdout F \xff\xfe\n"), "{out:?}");
    }
}
