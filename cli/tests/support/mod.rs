//! What the server-backed tests share: a `fovea serve` process on the golden checkpoint, on free
//! loopback ports, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The golden checkpoint's directory and its recorded cases.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `fovea serve` process, killed when dropped.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `fovea serve` on the golden checkpoint with its public API on `port`.
    pub fn start_on(port: u16) -> Server {
        let model = golden_dir().join("model");
        let child = Command::new(env!("CARGO_BIN_EXE_fovea"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{port}"),
                "--worker-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fovea serve starts");
        Server { child, port }
    }

    /// Waits until the public API accepts connections (at most a minute).
    pub fn wait_until_listening(&self) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "fovea serve did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The public API's address on `port`.
pub fn address(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}
