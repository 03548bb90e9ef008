//! The host's end of a VM pod's metadata port (`spec::metadata`): the
//! guest's agent sends each request of the pod's apps whole, in a frame;
//! this thread of the monitor makes it to the service as the pod's and
//! sends the answer back whole. One at a time: metadata requests are few
//! and small, and the service answers at once.

use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use spec::metadata::{read_frame, write_frame};

/// How long to wait for qemu to listen on the port's socket.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// Starts the thread that serves the guest's metadata port at `port`
/// (qemu's socket) for pod `uuid`, with the service at `service`.
pub fn spawn(port: PathBuf, service: PathBuf, uuid: String) -> io::Result<()> {
    std::thread::Builder::new().name("metadata".into()).spawn(move || {
        let stream = match crate::streams::connect_port(&port, PORT_WAIT) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pod-stage1-vm: metadata port {}: {e}", port.display());
                return;
            }
        };
        if let Err(e) = serve(&stream, &service, &uuid) {
            eprintln!("pod-stage1-vm: metadata port: {e}");
        }
    })?;
    Ok(())
}

/// Answers the port's requests until qemu closes it.
fn serve(port: &UnixStream, service: &std::path::Path, uuid: &str) -> io::Result<()> {
    let mut reader = BufReader::new(port);
    while let Some(request) = read_frame(&mut reader)? {
        let answer = stage1_ns::metadata::exchange(service, uuid, &request).unwrap_or_else(|e| {
            // The service could not be asked (not running, or it refused the pod).
            spec::metadata::text_answer(503, &format!("metadata service unavailable: {e}"))
        });
        write_frame(&mut &*port, &answer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_in_turn_and_a_missing_service_is_a_503() {
        let (host, guest) = UnixStream::pair().expect("pair");
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.sock");
        let server = std::thread::spawn(move || serve(&host, &missing, "u"));
        let mut g = &guest;
        write_frame(&mut g, b"GET /x HTTP/1.1\r\n\r\n").expect("send");
        write_frame(&mut g, b"GET /y HTTP/1.1\r\n\r\n").expect("send");
        let mut reader = BufReader::new(&guest);
        for _ in 0..2 {
            let answer = read_frame(&mut reader).expect("read").expect("an answer");
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 503 ") && text.contains("metadata service unavailable"), "{text}");
        }
        guest.shutdown(std::net::Shutdown::Write).expect("shutdown");
        server.join().expect("thread").expect("serve ends at the port's end");
    }
}
