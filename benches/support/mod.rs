//! What the benchmarks share: fresh key material, the machine's load and clock tick, a
//! JWKS endpoint for the server under test, a free port, waiting for the server.

use base64::Engine;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

pub fn key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn clk_tck() -> f64 {
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A JWKS endpoint on 127.0.0.1 (any path answers the key set), one thread.
pub fn serve_jwks(jwks: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                jwks.len(),
                jwks
            );
        }
    });
    port
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the server under test answers `/healthz` (60 s at most); panics naming its
/// log if it exits first.
pub fn wait_ready(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    server: &mut Child,
    log: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            panic!("custodian serve exited ({status}); see {}", log.display());
        }
        let ok = rt.block_on(async {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "server not ready within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}
