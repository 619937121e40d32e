//! Logs: what switchyard logs in this test process, captured as JSON.

use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Warnings and errors logged by switchyard in this test process, as JSON
/// objects. A global subscriber, installed by the first call: call it before
/// starting the hub whose lines a test wants, and pick them out by a
/// consumer name no other test uses.
pub fn captured_logs() -> Vec<Value> {
    static LINES: std::sync::OnceLock<Arc<Mutex<Vec<String>>>> = std::sync::OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let installed = tracing_subscriber::fmt()
            .json()
            .with_env_filter("switchyard=warn")
            .with_writer(move || LogLine {
                buffer: Vec::new(),
                sink: Arc::clone(&sink),
            })
            .try_init();
        assert!(installed.is_ok(), "another global subscriber is installed");
        lines
    });
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// One formatted log event on its way into [`captured_logs`].
struct LogLine {
    buffer: Vec<u8>,
    sink: Arc<Mutex<Vec<String>>>,
}

impl std::io::Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        // Bounded: every test in the binary logs here once it is installed.
        let mut sink = self.sink.lock().unwrap();
        if sink.len() < 200_000 {
            sink.push(String::from_utf8_lossy(&self.buffer).into_owned());
        }
    }
}
