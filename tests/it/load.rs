//! The `courier-load` tool against a real server: a short run of every scenario passes its
//! checks and writes a JSON report with the fields the benchmark docs rely on.

use std::process::Output;

use serde_json::Value;

use crate::support::{TestServer, test_config};

/// The test config with per-socket rate limits a load generator does not trip over.
fn load_server() -> TestServer {
    let mut config = test_config();
    config.socket.rate_per_sec = 1_000_000;
    config.socket.rate_burst = 1_000_000;
    TestServer::start_with(config, |c| c)
}

/// Runs the tool with `args` against `server`, returning its exit output and JSON report.
async fn run_load(server: &TestServer, args: &[&str]) -> (Output, Value) {
    let url = format!("ws://{}/socket/websocket", server.addr);
    // The test server runs inside this process.
    let pid = std::process::id().to_string();
    courier_load(["--url", url.as_str(), "--server-pid", pid.as_str()].iter().chain(args)).await
}

/// Runs the tool with `args` (and `--quiet --json`), returning its exit output and JSON report.
pub(crate) async fn courier_load<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> (Output, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier-load"))
        .args(["--quiet", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .await
        .expect("courier-load runs");
    let report =
        std::fs::read_to_string(&json).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or(Value::Null);
    (output, report)
}

/// Runs a scenario that must pass, and checks the report's shape.
async fn passing(server: &TestServer, args: &[&str]) -> Value {
    let (output, report) = run_load(server, args).await;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{args:?} failed:\n{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("PASSED"), "the table ends with the verdict:\n{printed}");
    for field in ["scenario", "url", "params", "duration_secs", "throughput", "latency", "metrics", "errors", "checks"]
    {
        assert!(report.get(field).is_some(), "report lacks {field}: {report}");
    }
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
    let checks = report["checks"].as_array().expect("checks");
    assert!(!checks.is_empty() && checks.iter().all(|c| c["passed"] == true), "{report}");
    assert!(report["server"]["rss_end_kib"].as_u64().is_some_and(|kib| kib > 0), "{report}");
    report
}

fn latency_count(report: &Value, name: &str) -> u64 {
    report["latency"][name]["count"].as_u64().unwrap_or_else(|| panic!("no {name} latency in {report}"))
}

#[tokio::test]
async fn idle_holds_every_socket_and_reports_server_memory_per_socket() {
    let server = load_server();
    let report = passing(
        &server,
        &["idle", "--sockets", "40", "--rooms", "4", "--users", "2", "--hold", "0.5", "--settle", "0.2"],
    )
    .await;
    assert_eq!(report["metrics"]["sockets_held"], 40.0);
    assert!(report["metrics"]["server_rss_per_socket_bytes"].is_number(), "{report}");
    assert_eq!(latency_count(&report, "connect_and_join"), 40);
}

#[tokio::test]
async fn fanout_delivers_every_broadcast_to_every_subscriber() {
    let server = load_server();
    let report = passing(&server, &["fanout", "--subscribers", "20", "--rate", "20", "--duration", "1"]).await;
    assert_eq!(report["throughput"]["broadcasts"]["count"], 20);
    assert_eq!(report["throughput"]["deliveries"]["count"], 400);
    assert_eq!(latency_count(&report, "publish_to_receive"), 400);
    assert_eq!(latency_count(&report, "publish_to_last_receive"), 20);
}

#[tokio::test]
async fn echo_counts_round_trips_with_their_latency() {
    let server = load_server();
    let report = passing(&server, &["echo", "--sockets", "5", "--in-flight", "4", "--duration", "1"]).await;
    let round_trips = report["throughput"]["round_trips"]["count"].as_u64().expect("count");
    assert!(round_trips > 0);
    assert!(latency_count(&report, "round_trip") >= round_trips);
}

#[tokio::test]
async fn chat_checks_every_device_got_every_acked_message_once_in_order() {
    let server = load_server();
    let report =
        passing(&server, &["chat", "--users", "3", "--devices", "2", "--rate", "100", "--duration", "1.5"]).await;
    let acked = report["throughput"]["messages_acked"]["count"].as_u64().expect("count");
    assert!(acked > 50, "{report}");
    // Each message reaches both devices of its recipient and the sender's other device.
    assert_eq!(
        report["throughput"]["deliveries"]["count"].as_u64(),
        report["throughput"]["messages_sent"]["count"].as_u64().map(|n| 3 * n)
    );
    let names: Vec<&str> =
        report["checks"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert!(names.contains(&"every acked message reached every device of both users"), "{names:?}");
    assert!(names.contains(&"offsets only go up on every device"), "{names:?}");
}

#[tokio::test]
async fn storm_rejoins_with_after_and_loses_or_repeats_nothing() {
    let server = load_server();
    let report = passing(
        &server,
        &[
            "storm",
            "--users",
            "3",
            "--devices",
            "2",
            "--rate",
            "100",
            "--duration",
            "2",
            "--churn",
            "0.5",
            "--connected-ms",
            "300",
        ],
    )
    .await;
    assert!(report["metrics"]["reconnects"].as_f64().is_some_and(|n| n >= 3.0), "{report}");
}

#[tokio::test]
async fn a_failed_check_fails_the_run_with_status_1() {
    let server = load_server();
    // `room:` (no name) is refused, so no socket joins.
    let (output, report) =
        run_load(&server, &["echo", "--sockets", "2", "--duration", "0.2", "--topic", "room:"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(report["passed"], false);
    assert!(report["errors"]["connect: refused"].as_u64().is_some_and(|n| n == 2), "{report}");
}
