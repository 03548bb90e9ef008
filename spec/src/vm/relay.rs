//! The control channel (`crate::control`) of a VM pod, carried over the
//! guest's [`CTL_PORT`](super::CTL_PORT).
//!
//! A namespace pod's pod-init serves `control.sock` in the pod directory
//! itself. A VM's pod-init cannot: a unix socket on the 9p share reaches no
//! one on the host. So the VM monitor (`pod-stage1-vm`) listens on that
//! same `control.sock` on the host, and stage0's client does not know the
//! difference; for each connection it relays the one request line over the
//! ctl port, where the guest's ctl agent hands it to pod-init on a
//! guest-local socket ([`GUEST_CONTROL_SOCKET`]) and sends the answer
//! back. The ctl port already carries `stop`; it is the one host→guest
//! control port, so requests share it rather than take a third port.
//!
//! A virtio-serial port is one byte stream with no connections, so each
//! exchange is framed and numbered:
//!
//! ```text
//! host → guest:  control <seq> <request line>\n
//! guest → host:  control <seq> <length>\n<length bytes of the answer>
//! ```
//!
//! `seq` lets the host drop an answer that comes after it gave up on its
//! request (a guest slow under TCG): the stream never falls out of step.
//! The host sends one request at a time.

use crate::control::MAX_RESPONSE;

/// The first word of a relayed request and of its answer's head.
pub const CONTROL: &str = "control";
/// Where a VM's pod-init serves the control channel, inside the guest (in
/// the initramfs's own root, not on the share).
pub const GUEST_CONTROL_SOCKET: &str = "/run/pod-control.sock";

/// The line that carries `request` (one `spec::control` request line,
/// its newline optional) for exchange `seq`; `None` if the request is not
/// one line.
pub fn encode_request(seq: u64, request: &str) -> Option<String> {
    let request = request.strip_suffix('\n').unwrap_or(request);
    (!request.contains(['\n', '\r'])).then(|| format!("{CONTROL} {seq} {request}\n"))
}

/// A relayed request line (without its newline): its `seq` and the
/// request line inside.
pub fn decode_request(line: &str) -> Option<(u64, &str)> {
    let rest = line.strip_prefix(CONTROL)?.strip_prefix(' ')?;
    let (seq, request) = rest.split_once(' ')?;
    Some((seq.parse().ok()?, request))
}

/// The frame of the answer to exchange `seq` (cut at `MAX_RESPONSE`).
pub fn encode_answer(seq: u64, answer: &[u8]) -> Vec<u8> {
    let answer = &answer[..answer.len().min(MAX_RESPONSE)];
    let mut out = format!("{CONTROL} {seq} {}\n", answer.len()).into_bytes();
    out.extend_from_slice(answer);
    out
}

/// The longest head line of an answer (`control <u64> <usize>`).
const MAX_HEAD: usize = 64;

/// Reassembles answers from the bytes the guest sends, however they are
/// cut. A line that is not an answer's head (a guest bug, or noise) is
/// skipped; it never stalls the stream, and what is held stays bounded
/// (one answer and its head) whatever the guest sends.
#[derive(Debug, Default)]
pub struct Answers {
    buf: Vec<u8>,
}

impl Answers {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole answer: its `seq` and bytes.
    pub fn next_answer(&mut self) -> Option<(u64, Vec<u8>)> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_HEAD {
                    // No head is this long: noise, dropped (its line's end
                    // is skipped as a bad head when it comes).
                    self.buf.clear();
                }
                return None;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            let parsed = head
                .strip_prefix(CONTROL)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|r| r.split_once(' '))
                .and_then(|(seq, len)| Some((seq.parse::<u64>().ok()?, len.parse::<usize>().ok()?)))
                .filter(|(_, len)| *len <= MAX_RESPONSE);
            let Some((seq, len)) = parsed else {
                self.buf.drain(..=end);
                continue;
            };
            if self.buf.len() < end + 1 + len {
                return None;
            }
            let answer = self.buf[end + 1..end + 1 + len].to_vec();
            self.buf.drain(..end + 1 + len);
            return Some((seq, answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_stay_one_line() {
        let line = encode_request(7, "pod-control 1 add web\n").expect("one line");
        assert_eq!(line, "control 7 pod-control 1 add web\n");
        assert_eq!(decode_request(line.trim_end()), Some((7, "pod-control 1 add web")));
        assert_eq!(encode_request(1, "a\nb"), None);
        assert_eq!(decode_request("stop"), None);
        assert_eq!(decode_request("control x pod-control 1 inspect"), None);
        assert_eq!(decode_request("control 3"), None);
    }

    #[test]
    fn answers_reassemble_across_reads_and_skip_noise() {
        let mut wire = b"garbage line\n".to_vec();
        wire.extend(encode_answer(1, b"pod-control 1 ok\napp a ready 5 - - 0 \n"));
        wire.extend(encode_answer(2, b""));
        wire.extend(b"control 3 99999999999\n");
        wire.extend(encode_answer(4, b"pod-control 1 ok\n"));
        let mut answers = Answers::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            answers.push(chunk);
            while let Some(a) = answers.next_answer() {
                got.push(a);
            }
        }
        assert_eq!(
            got,
            [
                (1, b"pod-control 1 ok\napp a ready 5 - - 0 \n".to_vec()),
                (2, Vec::new()),
                (4, b"pod-control 1 ok\n".to_vec())
            ]
        );
    }

    #[test]
    fn endless_noise_is_not_kept() {
        let mut answers = Answers::default();
        for _ in 0..1000 {
            answers.push(&[b'x'; 1000]);
            assert_eq!(answers.next_answer(), None);
        }
        assert!(answers.buf.len() <= 1000 + MAX_HEAD);
        answers.push(b"\n");
        answers.push(&encode_answer(5, b"pod-control 1 ok\n"));
        assert_eq!(answers.next_answer(), Some((5, b"pod-control 1 ok\n".to_vec())));
    }

    #[test]
    fn an_oversized_answer_is_cut() {
        let big = vec![b'x'; MAX_RESPONSE + 10];
        let mut answers = Answers::default();
        answers.push(&encode_answer(9, &big));
        assert_eq!(answers.next_answer().map(|(s, a)| (s, a.len())), Some((9, MAX_RESPONSE)));
    }
}
