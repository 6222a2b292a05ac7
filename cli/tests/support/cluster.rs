//! Separate-process clusters for the tests: a real etcd server (from `PATH` or /usr/bin/etcd,
//! installed by `.ci/run`; a test fails loudly without it) on free loopback ports with a
//! temporary data directory, `fovea coordinator` and `fovea worker` processes (of any role), a
//! look at the worker records etcd holds, and at what a worker reports over its own API (load,
//! cached image features). Processes are killed when dropped; a failing test prints the tail of
//! their logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use fovea_membership::role_name;
use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::worker::v1::vision_encoder_client::VisionEncoderClient;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use fovea_proto::worker::v1::{
    EncodedImage, VisionJob, WatchLoadRequest, WorkerLoad, WorkerRole, image_features_chunk,
};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

use fovea_model::testing::golden_model_dir;

use super::{address, free_addrs};

/// The cluster prefix the commands use when given no `--etcd-prefix`.
const DEFAULT_PREFIX: &str = "/fovea";

/// The etcd binary: `etcd` on `PATH`, else /usr/bin/etcd.
fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file());
    let binary = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        binary.is_file(),
        "etcd is not installed: these tests need a real etcd server (Debian package etcd-server; .ci/run installs it)"
    );
    binary
}

/// A scratch directory for one test's data and logs, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fovea-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stderr goes to a log file; killed when dropped, and its log's tail
/// printed if the test is failing.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {}", self.name);
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (at most `limit`) for it to exit; its exit status.
    pub fn wait_for_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{} did not exit within {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `limit`) until `line` appears `times` times in its log.
    pub async fn wait_for_log_line(&self, line: &str, times: usize, limit: Duration) {
        let started = Instant::now();
        while self
            .log()
            .lines()
            .filter(|logged| logged.contains(line))
            .count()
            < times
        {
            assert!(
                started.elapsed() < limit,
                "{} did not log {line:?} {times} times within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of {} ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A single-member etcd on loopback. It can be stopped and started again on the same ports and
/// data, as an etcd restart.
pub struct Etcd {
    client_addr: String,
    peer_addr: String,
    data_dir: PathBuf,
    logs: PathBuf,
    starts: usize,
    process: Option<Process>,
}

impl Etcd {
    /// An etcd whose data and logs go under `scratch`, not started yet.
    pub fn new(scratch: &Scratch) -> Etcd {
        let [client_addr, peer_addr] = free_addrs();
        Etcd {
            client_addr,
            peer_addr,
            data_dir: scratch.path().join("etcd-data"),
            logs: scratch.path().to_path_buf(),
            starts: 0,
            process: None,
        }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// Starts it and waits until it answers.
    pub async fn start(&mut self) {
        self.starts += 1;
        let peer = format!("http://{}", self.peer_addr);
        let process = Process::spawn(
            "etcd",
            Command::new(etcd_binary())
                .args(["--name", "fovea-test", "--data-dir"])
                .arg(&self.data_dir)
                .args([
                    "--listen-client-urls",
                    &self.url(),
                    "--advertise-client-urls",
                    &self.url(),
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("fovea-test={peer}")]),
            self.logs.join(format!("etcd-{}.log", self.starts)),
        );
        self.process = Some(process);
        let started = Instant::now();
        while self.worker_ids_under(DEFAULT_PREFIX).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills it (its data stays for the next start).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// The ids of the worker records under cluster prefix `prefix`, or `None` if etcd does not
    /// answer.
    pub async fn worker_ids_under(&self, prefix: &str) -> Option<Vec<String>> {
        let workers = format!("{prefix}/workers/");
        let answer = async {
            let mut client = Client::connect([self.url()], None).await.ok()?;
            let records = client
                .get(workers.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .ok()?;
            let keys = records.kvs().iter().map(|kv| {
                kv.key_str()
                    .unwrap()
                    .trim_start_matches(&workers)
                    .to_string()
            });
            Some(keys.collect())
        };
        tokio::time::timeout(Duration::from_secs(3), answer)
            .await
            .ok()
            .flatten()
    }

    /// Waits (at most `limit`) until the worker ids registered under the default prefix satisfy
    /// `check`.
    pub async fn wait_for_workers(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&[String]) -> bool,
    ) {
        self.wait_for_workers_under(DEFAULT_PREFIX, limit, what, check)
            .await;
    }

    /// Waits (at most `limit`) until the worker ids registered under `prefix` satisfy `check`.
    pub async fn wait_for_workers_under(
        &self,
        prefix: &str,
        limit: Duration,
        what: &str,
        check: impl Fn(&[String]) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let ids = self.worker_ids_under(prefix).await;
            if ids.as_deref().is_some_and(&check) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "{what}: after {limit:?} etcd holds {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A `fovea worker` process on the golden checkpoint.
pub struct Worker {
    pub id: String,
    pub addr: String,
    pub process: Process,
}

impl Worker {
    /// Starts full worker `id` against `etcd_url` with `extra` arguments (e.g. a lease TTL).
    pub fn start(scratch: &Scratch, etcd_url: &str, id: &str, extra: &[&str]) -> Worker {
        Self::start_in_role(WorkerRole::Full, scratch, etcd_url, id, extra)
    }

    /// Starts worker `id` in `role` against `etcd_url` with `extra` arguments.
    pub fn start_in_role(
        role: WorkerRole,
        scratch: &Scratch,
        etcd_url: &str,
        id: &str,
        extra: &[&str],
    ) -> Worker {
        let [addr] = free_addrs();
        let model = golden_model_dir();
        let process = Process::spawn(
            id,
            Command::new(env!("CARGO_BIN_EXE_fovea"))
                .args([
                    "worker",
                    "--role",
                    role_name(role),
                    "--model",
                    model.to_str().unwrap(),
                ])
                .args(["--etcd", etcd_url, "--addr", &addr, "--worker-id", id])
                .args(extra),
            scratch.path().join(format!("{id}.log")),
        );
        Worker {
            id: id.to_string(),
            addr,
            process,
        }
    }

    /// Its load reports, every 10 ms (a vision worker's count its encoder's images and batches).
    async fn load_reports(&self) -> tonic::Streaming<WorkerLoad> {
        let mut client = WorkerClient::connect(address_of(&self.addr)).await.unwrap();
        let reports = client
            .watch_load(WatchLoadRequest { interval_ms: 10 })
            .await;
        reports.unwrap().into_inner()
    }

    /// Its load report now.
    pub async fn load(&self) -> WorkerLoad {
        self.load_reports().await.message().await.unwrap().unwrap()
    }

    /// Its load reports as they come, for as long as it runs and the receiver lives.
    pub async fn watch_load(&self) -> watch::Receiver<WorkerLoad> {
        let mut reports = self.load_reports().await;
        let (sender, receiver) = watch::channel(reports.message().await.unwrap().unwrap());
        tokio::spawn(async move {
            while let Ok(Some(load)) = reports.message().await {
                if sender.send(load).is_err() {
                    return;
                }
            }
        });
        receiver
    }

    /// Forward passes it has run, from its load report.
    pub async fn steps(&self) -> u64 {
        self.load().await.steps_completed
    }

    /// Waits (at most `limit`) until it runs and queues nothing and every KV block is free (the
    /// prefix cache's count as free).
    pub async fn wait_until_idle(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let load = self.load().await;
            let idle = load.running_requests == 0 && load.queued_requests == 0;
            if idle && load.free_kv_blocks == load.total_kv_blocks {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "{} is not idle after {limit:?}: {load:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether this vision worker has the features of `image` (an encoded file) in its cache: it
    /// is asked for them by content hash alone, which it answers from the cache or with NOT_FOUND.
    pub async fn has_image_features(&self, image: &[u8]) -> bool {
        let mut client = VisionEncoderClient::connect(address_of(&self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20);
        let job = VisionJob {
            request_id: "cache-probe".into(),
            image: Some(EncodedImage {
                content_hash: fovea_proto::image_content_hash(image).to_vec().into(),
                ..Default::default()
            }),
        };
        match client.encode_image(job).await {
            Ok(response) => {
                let first = response.into_inner().message().await.unwrap().unwrap();
                match first.part {
                    Some(image_features_chunk::Part::Header(header)) => header.cached,
                    other => panic!("{}: features start with a header, not {other:?}", self.id),
                }
            }
            Err(status) if status.code() == Code::NotFound => false,
            Err(status) => panic!("{}: the cache probe failed: {status}", self.id),
        }
    }
}

fn address_of(addr: &str) -> String {
    format!("http://{addr}")
}

/// A `fovea coordinator` process on the golden checkpoint.
pub struct Coordinator {
    port: u16,
    pub process: Process,
}

impl Coordinator {
    /// Starts a coordinator against `etcd_url` with `extra` arguments (e.g. split flags).
    /// Its log is `coordinator-<gRPC port>.log`, so that several can share `scratch`.
    pub fn start(scratch: &Scratch, etcd_url: &str, extra: &[&str]) -> Coordinator {
        let [grpc, http] = free_addrs();
        let port = grpc.rsplit(':').next().unwrap().parse().unwrap();
        let name = format!("coordinator-{port}");
        let model = golden_model_dir();
        let process = Process::spawn(
            &name,
            Command::new(env!("CARGO_BIN_EXE_fovea"))
                .args([
                    "coordinator",
                    "--etcd",
                    etcd_url,
                    "--model",
                    model.to_str().unwrap(),
                ])
                .args(["--grpc-addr", &grpc, "--http-addr", &http])
                .args(extra),
            scratch.path().join(format!("{name}.log")),
        );
        Coordinator { port, process }
    }

    /// Waits (at most `limit`) until it has logged worker `id` joining its view of the cluster
    /// `times` times.
    pub async fn wait_until_joined(&self, id: &str, times: usize, limit: Duration) {
        let line = format!("worker {id} joined");
        self.process.wait_for_log_line(&line, times, limit).await;
    }

    /// Waits (at most `limit`) until it has logged worker `id` leaving its view of the cluster
    /// `times` times.
    pub async fn wait_until_left(&self, id: &str, times: usize, limit: Duration) {
        let line = format!("worker {id} left");
        self.process.wait_for_log_line(&line, times, limit).await;
    }

    /// A gRPC client, once the coordinator accepts connections (at most a minute).
    pub async fn client(&self) -> GenerationClient<Channel> {
        let started = Instant::now();
        loop {
            match GenerationClient::connect(address(self.port)).await {
                Ok(client) => {
                    return client
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20);
                }
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the coordinator did not come up: {e}"),
            }
        }
    }
}
