//! The access log (`--access-log PATH|-`): one line per request and one per
//! tunnel when it ends, as JSON (one object per line) or in Apache's common
//! log format.
//!
//! Lines are written off the request path: a request formats its line
//! into its worker's batch, handed (at 16 KiB, or every 100 ms) to a queue
//! bounded in bytes (4 MiB); a thread of the log's own writes the queue out
//! through a buffer, flushed whenever the queue is empty. Control messages
//! (a new file, a flush) never wait. A slow disk
//! never blocks a request: when the queue is full the line is dropped and
//! counted (`proxy_access_log_dropped_total`), with one WARN line when
//! dropping starts and one INFO line with the count when the writer has
//! caught up. SIGUSR1 reopens the file (after logrotate moved it).
//!
//! `line` is the text of a line (formatting and escaping, sans-IO); this
//! module the batches, the queue and the writer thread.
//!
//! Imports nothing of the crate.

mod line;

pub(crate) use line::RequestRecord;
use line::{Clock, TunnelRecord};

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Bytes of lines queued for the writer, at most (what a disk that stops
/// may hold in memory): past it, batches are dropped and counted.
const QUEUE: usize = 4 * 1024 * 1024;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// `-` is standard output, anything else a file path.
    pub(crate) fn parse(s: &str) -> Destination {
        match s {
            "-" => Destination::Stdout,
            path => Destination::File(PathBuf::from(path)),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stdout => f.write_str("-"),
            Destination::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// Apache's common log format, with the fields it lacks appended.
    Common,
}

impl Format {
    pub(crate) fn parse(s: &str) -> Result<Format, String> {
        match s {
            "json" => Ok(Format::Json),
            "common" => Ok(Format::Common),
            _ => Err(format!("invalid access log format {s:?} (json or common)")),
        }
    }
}

enum Msg {
    /// Lines, each ending in `\n`.
    Lines(Vec<u8>),
    /// Write to this from now on (`None`: nowhere).
    Switch(Option<Sink>),
    /// Flush, then say so.
    Sync(tokio::sync::oneshot::Sender<()>),
}

enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>, PathBuf),
}

impl Sink {
    fn open(dest: &Destination) -> Result<Sink, String> {
        match dest {
            Destination::Stdout => Ok(Sink::Stdout(BufWriter::new(std::io::stdout()))),
            Destination::File(path) => File::options()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Sink::File(BufWriter::with_capacity(64 * 1024, f), path.clone()))
                .map_err(|e| format!("cannot open access log {}: {e}", path.display())),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w, _) => w,
        }
    }
}

/// The process's access log; cheap to clone. Off until given a destination.
#[derive(Clone)]
pub(crate) struct AccessLog(Arc<Shared>);

struct Shared {
    on: AtomicBool,
    format: AtomicU8,
    /// Never blocks: the lines' bytes are bounded by `queued`.
    tx: Sender<Msg>,
    /// Bytes of lines sent and not yet written.
    queued: Arc<AtomicUsize>,
    /// Where it writes now, to reopen on SIGUSR1.
    destination: Mutex<Option<Destination>>,
    /// Lines dropped since the writer last caught up.
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// An access log writing nowhere yet; its thread waits for lines.
    pub(crate) fn new() -> AccessLog {
        let (tx, rx) = channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let (seen, written) = (dropped.clone(), queued.clone());
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, seen, written));
        AccessLog(Arc::new(Shared {
            on: AtomicBool::new(false),
            format: AtomicU8::new(Format::Json as u8),
            tx,
            queued,
            destination: Mutex::new(None),
            dropped,
        }))
    }

    /// Writes to `destination` in `format` from now on (`None`: off). A
    /// file is opened here, so that an error is said at once; the one in
    /// use stays then.
    pub(crate) fn set(
        &self,
        destination: Option<&Destination>,
        format: Format,
    ) -> Result<(), String> {
        let mut current = self.0.destination.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == destination {
            self.0.format.store(format as u8, Ordering::Relaxed);
            return Ok(());
        }
        // Nothing changes, format included, if the file cannot be opened.
        let sink = destination.map(Sink::open).transpose()?;
        self.0.format.store(format as u8, Ordering::Relaxed);
        self.0.on.store(sink.is_some(), Ordering::Release);
        let _ = self.0.tx.send(Msg::Switch(sink));
        *current = destination.cloned();
        Ok(())
    }

    /// Opens the file again (SIGUSR1, after logrotate moved it).
    pub(crate) fn reopen(&self) -> Result<(), String> {
        let current = self.0.destination.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dest @ Destination::File(_)) = current.as_ref() {
            let sink = Sink::open(dest)?;
            let _ = self.0.tx.send(Msg::Switch(Some(sink)));
        }
        Ok(())
    }

    /// Whether lines are written: when not, callers skip gathering them.
    pub(crate) fn enabled(&self) -> bool {
        self.0.on.load(Ordering::Relaxed)
    }

    fn format(&self) -> Format {
        match self.0.format.load(Ordering::Relaxed) {
            x if x == Format::Common as u8 => Format::Common,
            _ => Format::Json,
        }
    }

    /// Hands this thread's batch to the writer.
    fn send(&self, batch: &mut Batch) {
        if batch.text.is_empty() {
            return;
        }
        let text = std::mem::replace(&mut batch.text, Vec::with_capacity(BATCH + 512));
        let lines = std::mem::take(&mut batch.lines);
        let len = text.len();
        if self.0.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE {
            self.0.queued.fetch_sub(len, Ordering::Relaxed);
            metrics::counter!("proxy_access_log_dropped_total").increment(lines);
            if self.0.dropped.fetch_add(lines, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    queued_bytes = QUEUE,
                    "access log: the writer is behind (a slow disk?); dropping lines until it catches up"
                );
            }
            return;
        }
        if self.0.tx.send(Msg::Lines(text)).is_err() {
            self.0.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Adds a line to this thread's batch, sent once it is large enough
    /// (or by [`flush`](AccessLog::flush)).
    fn add(&self, line: impl FnOnce(&mut Vec<u8>, &mut Clock)) {
        BATCH_OF_THREAD.with(|b| {
            let Ok(mut b) = b.try_borrow_mut() else {
                return;
            };
            let b = &mut *b;
            line(&mut b.text, &mut b.clock);
            b.text.push(b'\n');
            b.lines += 1;
            if b.text.len() >= BATCH {
                self.send(b);
            }
        });
    }

    /// Sends this thread's batch now: each worker calls it a few times a
    /// second, so that a quiet worker's lines are not held back.
    pub(crate) fn flush(&self) {
        BATCH_OF_THREAD.with(|b| {
            if let Ok(mut b) = b.try_borrow_mut() {
                self.send(&mut b);
            }
        });
    }

    /// Resolves once every line handed to the writer so far is written (at
    /// shutdown, after each worker's [`flush`](AccessLog::flush)).
    pub(crate) async fn sync(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.0.tx.send(Msg::Sync(tx));
        let _ = rx.await;
    }

    /// Logs a request whose response has ended (or was dropped).
    pub(crate) fn request(&self, r: &RequestRecord) {
        let format = self.format();
        self.add(|out, clock| match format {
            Format::Json => r.json(out, clock),
            Format::Common => r.common(out, clock),
        });
    }

    /// Logs a tunnel that has ended; `upstream` is its group's name.
    pub(crate) fn tunnel(&self, upstream: &str, end: &proxy_tower::TunnelEnd) {
        let r = TunnelRecord {
            time: SystemTime::now(),
            upstream,
            end,
        };
        let format = self.format();
        self.add(|out, clock| match format {
            Format::Json => r.json(out, clock),
            Format::Common => r.common(out, clock),
        });
    }
}

/// A batch of lines is handed to the writer at this size.
const BATCH: usize = 16 * 1024;

/// The lines a thread has formatted and not yet handed to the writer.
struct Batch {
    text: Vec<u8>,
    lines: u64,
    clock: Clock,
}

thread_local! {
    static BATCH_OF_THREAD: std::cell::RefCell<Batch> = std::cell::RefCell::new(Batch {
        text: Vec::new(),
        lines: 0,
        clock: Clock::default(),
    });
}

/// The writer thread: writes lines as they come, flushes when none waits.
fn write_lines(rx: Receiver<Msg>, dropped: Arc<AtomicU64>, queued: Arc<AtomicUsize>) {
    let mut sink: Option<Sink> = None;
    let mut failing = false;
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(_) => {
                // Nothing waiting: the lines so far go out now.
                if let Some(s) = &mut sink {
                    write_or_say(s.writer().flush(), &mut failing);
                }
                let n = dropped.swap(0, Ordering::Relaxed);
                if n > 0 {
                    tracing::info!(dropped = n, "access log: the writer caught up");
                }
                // Everything is out: sleep until the next message.
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            }
        };
        match msg {
            Msg::Lines(lines) => {
                if let Some(s) = &mut sink {
                    write_or_say(s.writer().write_all(&lines), &mut failing);
                }
                queued.fetch_sub(lines.len(), Ordering::Relaxed);
            }
            Msg::Sync(done) => {
                if let Some(s) = &mut sink {
                    write_or_say(s.writer().flush(), &mut failing);
                }
                let _ = done.send(());
            }
            Msg::Switch(next) => {
                if let Some(s) = &mut sink {
                    let _ = s.writer().flush();
                }
                if let Some(Sink::File(_, path)) = &next {
                    tracing::info!(path = %path.display(), "access log opened");
                }
                sink = next;
                failing = false;
            }
        }
    }
}

/// Says a write error once, until writes work again.
fn write_or_say(r: std::io::Result<()>, failing: &mut bool) {
    match r {
        Ok(()) => *failing = false,
        Err(e) if !*failing => {
            *failing = true;
            tracing::warn!(error = %e, "access log: cannot write; lines are lost until it can");
        }
        Err(_) => {}
    }
}
