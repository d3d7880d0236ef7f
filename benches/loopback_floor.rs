//! The floor under `fanout`'s publish→last receive on this machine: one frame written to each of
//! N loopback TCP sockets by plain blocking `write`s, no WebSocket, no actors, no JSON, read by a
//! 2-worker tokio runtime in another process (as `courier-load` reads Courier). Whatever a
//! server does per subscriber comes on top of this.
//!
//! `cargo bench --bench loopback_floor` measures 10,000 sockets with one and with two sending
//! threads; `cargo test --bench loopback_floor` runs a small smoke of the same code. The sending
//! side is this program started again as a child process with `send`, because one process may
//! not hold both ends of 10,000 connections under a 20,000 file-descriptor limit.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;

/// Bytes per frame: about a `fanout` broadcast's.
const FRAME: usize = 150;
/// Pause between rounds, so each starts from idle sockets as `fanout --rate 2` does.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(400);
/// The most a run may take before it is called failed.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("send") {
        let number = |i: usize| args.get(i).and_then(|a| a.parse().ok()).expect("send SOCKETS SENDERS ROUNDS");
        send(number(2), number(3), number(4));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --bench` passes nothing.
    let (sockets, rounds, senders): (usize, usize, &[usize]) =
        if args.iter().any(|a| a == "--bench") { (10_000, 12, &[1, 2]) } else { (200, 3, &[1]) };
    for &threads in senders {
        let worst = receive(sockets, threads, rounds);
        let mut sorted = worst.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "loopback_floor: {sockets} sockets, {threads} sending thread(s): publish->last receive median {:.1} ms \
             (rounds, sorted: {:?})",
            sorted[sorted.len() / 2],
            sorted.iter().map(|ms| (ms * 10.0).round() / 10.0).collect::<Vec<_>>()
        );
    }
}

/// The sending side: accepts `sockets` connections, prints nothing until it listens, then each
/// round stamps a frame with the round's start and writes it to every socket.
fn send(sockets: usize, threads: usize, rounds: usize) {
    // The measuring side kills this process when it gives up; this covers it being killed
    // itself before it could.
    thread::spawn(|| {
        thread::sleep(RUN_LIMIT);
        std::process::exit(2);
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    println!("{}", listener.local_addr().expect("local address").port());
    let mut groups: Vec<Vec<TcpStream>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..sockets {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        groups[i % threads].push(stream);
    }
    thread::sleep(Duration::from_millis(500));
    let groups: Vec<Arc<std::sync::Mutex<Vec<TcpStream>>>> =
        groups.into_iter().map(|g| Arc::new(std::sync::Mutex::new(g))).collect();
    for _ in 0..rounds {
        let mut frame = [b'x'; FRAME];
        frame[..8].copy_from_slice(&now_micros().to_le_bytes());
        let writers: Vec<_> = groups
            .iter()
            .map(|group| {
                let group = Arc::clone(group);
                thread::spawn(move || {
                    for stream in group.lock().expect("group").iter_mut() {
                        stream.write_all(&frame).expect("write");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer thread");
        }
        thread::sleep(BETWEEN_ROUNDS);
    }
}

/// Starts the sending side, connects to it and returns each round's publish->last receive in ms.
fn receive(sockets: usize, threads: usize, rounds: usize) -> Vec<f64> {
    let exe = std::env::current_exe().expect("own path");
    let mut child = SendingSide(
        Command::new(exe)
            .args(["send", &sockets.to_string(), &threads.to_string(), &rounds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the sending side"),
    );
    let mut port = String::new();
    BufReader::new(child.0.stdout.take().expect("child stdout")).read_line(&mut port).expect("port");
    let address = format!("127.0.0.1:{}", port.trim());

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let worst: Arc<Vec<AtomicU64>> = Arc::new((0..rounds).map(|_| AtomicU64::new(0)).collect());
    let finished = Arc::new(AtomicUsize::new(0));
    for _ in 0..sockets {
        let stream = TcpStream::connect(&address).expect("connect");
        stream.set_nonblocking(true).expect("nonblocking");
        let (worst, finished) = (Arc::clone(&worst), Arc::clone(&finished));
        runtime.spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else { return };
            let mut frame = [0u8; FRAME];
            for slot in worst.iter() {
                if stream.read_exact(&mut frame).await.is_err() {
                    return;
                }
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&frame[..8]);
                slot.fetch_max(now_micros().saturating_sub(u64::from_le_bytes(stamp)), Ordering::AcqRel);
            }
            finished.fetch_add(1, Ordering::AcqRel);
        });
    }
    let started = Instant::now();
    while finished.load(Ordering::Acquire) < sockets && started.elapsed() < RUN_LIMIT {
        if let Ok(Some(status)) = child.0.try_wait()
            && !status.success()
        {
            panic!("the sending side failed: {status}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.0.wait();
    let done = finished.load(Ordering::Acquire);
    assert_eq!(done, sockets, "every socket got every round within {RUN_LIMIT:?}");
    runtime.shutdown_timeout(Duration::from_secs(1));
    worst.iter().map(|w| w.load(Ordering::Acquire) as f64 / 1000.0).collect()
}

/// The sending side's process, killed if the measuring side gives up or panics, so that it
/// never waits on `accept` forever.
struct SendingSide(Child);

impl Drop for SendingSide {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
