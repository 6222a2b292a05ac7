//! `fovea coordinator` and `fovea worker` as separate processes over loopback gRPC, with
//! membership in a real etcd: golden tokens through the cluster, workers that die, stop, drain
//! or start early, and an etcd restart under load.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fovea_model::testing::{golden_cases, golden_model_dir};
use fovea_proto::v1::FinishReason;
use fovea_proto::v1::generation_client::GenerationClient;
use support::cluster::{Coordinator, Etcd, Scratch, Worker};
use support::{collect, golden_request};
use tonic::Code;
use tonic::transport::Channel;

/// How long a test waits for something the cluster does within seconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// Sends the first golden case and checks its golden tokens.
async fn golden_request_succeeds(client: &mut GenerationClient<Channel>) {
    let case = &golden_cases()[0];
    let (tokens, _, last) = collect(client, golden_request(case, 12)).await;
    assert_eq!(last.finish_reason(), FinishReason::Length, "{}", last.error);
    assert_eq!(tokens, case.greedy_tokens.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_through_a_coordinator_and_two_workers_give_golden_tokens() {
    let scratch = Scratch::new("cluster-golden");
    let mut etcd = Etcd::new(&scratch);
    etcd.start().await;
    // The second worker splits its decoder over two ranks: both must give the golden tokens.
    let workers = [
        Worker::start(&scratch, &etcd.url(), "w1", &[]),
        Worker::start(
            &scratch,
            &etcd.url(),
            "w2",
            &["--tp", "2", "--threads-per-rank", "1"],
        ),
    ];
    let coordinator = Coordinator::start(&scratch, &etcd.url(), &[]);
    etcd.wait_for_workers(PATIENCE, "both workers register", |ids| ids == ["w1", "w2"])
        .await;
    let mut client = coordinator.client().await;

    let cases = golden_cases();
    for case in &cases {
        let (tokens, _, last) = collect(&mut client, golden_request(case, 12)).await;
        assert_eq!(
            tokens,
            case.greedy_tokens.clone(),
            "{}: {}",
            case.name,
            last.error
        );
        assert_eq!(last.finish_reason(), FinishReason::Length);
    }
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let case = cases[i % cases.len()].clone();
            let mut client = client.clone();
            tokio::spawn(async move {
                let (tokens, _, _) = collect(&mut client, golden_request(&case, 12)).await;
                (tokens, case.greedy_tokens.clone())
            })
        })
        .collect();
    for run in runs {
        let (tokens, expected) = run.await.unwrap();
        assert_eq!(
            tokens, expected,
            "concurrent requests keep their golden tokens"
        );
    }

    // A second request while one runs goes to the other worker (the busy one has a job in flight
    // and, once its next load report is in, a smaller free share of its KV cache), so both make
    // progress.
    let mut running = Vec::new();
    for _ in 0..2 {
        let mut stream = client
            .generate(golden_request(&cases[0], 20_000))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        running.push(stream);
        // Load reports come every 100 ms: let both workers' reports catch up.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for worker in &workers {
        let before = worker.steps().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            worker.steps().await > before,
            "{} has no running request: requests go to the least-loaded worker",
            worker.id
        );
    }
    drop(running);

    // Coordinators hold no state of their own: a second one serves the same workers.
    let second = Coordinator::start(&scratch, &etcd.url(), &[]);
    golden_request_succeeds(&mut second.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_drops_out_when_its_lease_expires_and_with_none_left_requests_are_unavailable()
 {
    let scratch = Scratch::new("cluster-kill");
    let mut etcd = Etcd::new(&scratch);
    etcd.start().await;
    let ttl = ["--lease-ttl-secs", "2"];
    let first = Worker::start(&scratch, &etcd.url(), "w1", &ttl);
    let second = Worker::start(&scratch, &etcd.url(), "w2", &ttl);
    let coordinator = Coordinator::start(&scratch, &etcd.url(), &[]);
    etcd.wait_for_workers(PATIENCE, "both workers register", |ids| ids.len() == 2)
        .await;
    let mut client = coordinator.client().await;
    golden_request_succeeds(&mut client).await;

    first.process.signal("KILL");
    golden_request_succeeds(&mut client).await;
    etcd.wait_for_workers(PATIENCE, "the killed worker's lease expires", |ids| {
        ids == ["w2"]
    })
    .await;
    for _ in 0..3 {
        golden_request_succeeds(&mut client).await;
    }

    second.process.signal("KILL");
    etcd.wait_for_workers(
        PATIENCE,
        "the last worker's lease expires",
        <[String]>::is_empty,
    )
    .await;
    // A worker of another cluster sharing the etcd (another prefix) is not this cluster's.
    let _elsewhere = Worker::start(
        &scratch,
        &etcd.url(),
        "w3",
        &["--etcd-prefix", "/elsewhere"],
    );
    etcd.wait_for_workers_under(
        "/elsewhere",
        PATIENCE,
        "the other cluster's worker registers",
        |ids| ids == ["w3"],
    )
    .await;
    let refused = client
        .generate(golden_request(&golden_cases()[0], 4))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(
        refused.message().contains("no live full or decode worker"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_etcd_under_load_loses_no_request_and_a_later_worker_is_picked_up() {
    let scratch = Scratch::new("cluster-etcd-restart");
    let mut etcd = Etcd::new(&scratch);
    etcd.start().await;
    let ttl = ["--lease-ttl-secs", "3"];
    let first = Worker::start(&scratch, &etcd.url(), "w1", &ttl);
    let coordinator = Coordinator::start(&scratch, &etcd.url(), &[]);
    etcd.wait_for_workers(PATIENCE, "the first worker registers", |ids| ids == ["w1"])
        .await;
    let client = coordinator.client().await;

    let running = Arc::new(AtomicBool::new(true));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (mut client, running) = (client.clone(), Arc::clone(&running));
            tokio::spawn(async move {
                let mut done = 0;
                while running.load(Ordering::Relaxed) {
                    golden_request_succeeds(&mut client).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.start().await;
    let second = Worker::start(&scratch, &etcd.url(), "w2", &ttl);
    etcd.wait_for_workers(
        PATIENCE,
        "both workers are registered after the restart",
        |ids| ids == ["w1", "w2"],
    )
    .await;
    running.store(false, Ordering::Relaxed);
    for run in load {
        assert!(
            run.await
                .expect("every request during the restart succeeded")
                > 0
        );
    }

    // The worker started after the restart gets work: with the first one gone, all of it.
    first.process.signal("KILL");
    let mut client = client;
    for _ in 0..3 {
        golden_request_succeeds(&mut client).await;
    }
    assert!(second.steps().await > 0, "the later worker was picked up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_etcd_registers_once_etcd_is_up() {
    let scratch = Scratch::new("cluster-early-worker");
    let mut etcd = Etcd::new(&scratch);
    let mut worker = Worker::start(&scratch, &etcd.url(), "early", &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        worker.process.is_running(),
        "the worker waits for etcd: {}",
        worker.process.log()
    );
    etcd.start().await;
    etcd.wait_for_workers(PATIENCE, "the early worker registers", |ids| {
        ids == ["early"]
    })
    .await;
    let coordinator = Coordinator::start(&scratch, &etcd.url(), &[]);
    let mut client = coordinator.client().await;
    golden_request_succeeds(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_lease_and_registers_again_when_resumed() {
    let scratch = Scratch::new("cluster-pause");
    let mut etcd = Etcd::new(&scratch);
    etcd.start().await;
    let ttl = ["--lease-ttl-secs", "2"];
    let paused = Worker::start(&scratch, &etcd.url(), "w1", &ttl);
    let _other = Worker::start(&scratch, &etcd.url(), "w2", &ttl);
    let coordinator = Coordinator::start(&scratch, &etcd.url(), &[]);
    etcd.wait_for_workers(PATIENCE, "both workers register", |ids| ids.len() == 2)
        .await;
    let mut client = coordinator.client().await;

    paused.process.signal("STOP");
    etcd.wait_for_workers(PATIENCE, "the paused worker's lease expires", |ids| {
        ids == ["w2"]
    })
    .await;
    for _ in 0..3 {
        golden_request_succeeds(&mut client).await;
    }
    paused.process.signal("CONT");
    etcd.wait_for_workers(PATIENCE, "the resumed worker registers again", |ids| {
        ids.len() == 2
    })
    .await;
    golden_request_succeeds(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_the_worker_at_once_and_its_running_request_finishes() {
    let scratch = Scratch::new("cluster-drain");
    let mut etcd = Etcd::new(&scratch);
    etcd.start().await;
    // A lease far longer than the test: the record can only go by being revoked.
    let mut worker = Worker::start(&scratch, &etcd.url(), "w1", &["--lease-ttl-secs", "600"]);
    let coordinator = Coordinator::start(&scratch, &etcd.url(), &[]);
    etcd.wait_for_workers(PATIENCE, "the worker registers", |ids| ids == ["w1"])
        .await;
    let mut client = coordinator.client().await;

    let case = &golden_cases()[0];
    let mut stream = client
        .generate(golden_request(case, 2000))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    worker.process.signal("TERM");
    etcd.wait_for_workers(PATIENCE, "the worker deregisters", <[String]>::is_empty)
        .await;
    let (mut tokens, mut last) = (0, None);
    while let Some(message) = stream
        .message()
        .await
        .expect("the running request is not cut off")
    {
        match message.event.unwrap() {
            fovea_proto::v1::generate_response::Event::Delta(delta) => {
                tokens += delta.token_ids.len()
            }
            fovea_proto::v1::generate_response::Event::Final(done) => last = Some(done),
        }
    }
    let last = last.expect("a final message");
    assert_eq!(last.finish_reason(), FinishReason::Length, "{}", last.error);
    assert!(tokens > 0);
    assert!(
        worker.process.wait_for_exit(PATIENCE).success(),
        "{}",
        worker.process.log()
    );
}

#[test]
fn roles_and_sizes_this_build_does_not_serve_fail_at_start_up_with_a_message() {
    let model = golden_model_dir();
    for (args, expected) in [
        (
            &["--role", "vision", "--tp", "2", "--addr", "127.0.0.1:0"][..],
            "the vision role needs --tp 1",
        ),
        (
            &["--role", "full", "--tp", "3", "--addr", "127.0.0.1:0"][..],
            "TP size of 3 does not divide the model's 4 query heads",
        ),
        (
            &["--role", "gpu"][..],
            "expected full, vision, prefill or decode",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fovea"))
            .args([
                "worker",
                "--etcd",
                "http://127.0.0.1:9",
                "--model",
                model.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must not start");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
