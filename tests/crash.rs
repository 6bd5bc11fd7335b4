//! Crash test: the real `o2o-sidecar` binary receives a stream of DOKU-signed notifications
//! and is killed with SIGKILL at random moments, then restarted on the same SQLite file. A
//! notification that got no `2xx` is sent again with the same Request-Id, as DOKU retries. A
//! subscriber follows StreamNotifications, resuming after every restart with its last resume
//! token. At the end every acknowledged notification must have been delivered, and no event
//! id (and no invoice) delivered twice.
//!
//! `cargo test --test crash` runs a short round (CI); `O2O_CRASH_KILLS=200 cargo test --release
//! --test crash -- --nocapture` is the full run. `O2O_CRASH_SEED` replays a run's timing, and
//! `O2O_CRASH_MAX_UPTIME_MS` bounds how long each incarnation lives (default 300).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use o2o_sidecar::{
    BoundAddrs,
    grpc::{
        pb::{self, o2o_payments_client::O2oPaymentsClient},
        stream::resume_token,
    },
    sim::SimConfig,
    testing::{
        CLIENT_ID, ChildOptions, ChildSidecar, PATH, Sim, notification_body, post_notification,
        signed_headers,
    },
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::sync::watch;

const SECRET: &str = "SK-CRASH-0123456789abcdef";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the notification senders share.
#[derive(Default)]
struct Outbox {
    /// Notifications that got no 2xx yet: sent again, like DOKU's retries.
    retry: Mutex<VecDeque<u64>>,
    /// Notifications answered 2xx.
    acked: Mutex<BTreeSet<u64>>,
    /// Next new notification.
    next: AtomicU64,
    /// No new notifications (the final incarnation drains the retries).
    no_new: AtomicBool,
    /// Every sender stops.
    stop: AtomicBool,
    /// Attempts answered with something other than 2xx, or not at all.
    failed_attempts: AtomicU64,
}

fn invoice(id: u64) -> String {
    format!("INV-CR-{id}")
}

async fn sender(
    outbox: Arc<Outbox>,
    mut addrs: watch::Receiver<Option<BoundAddrs>>,
    http: reqwest::Client,
) {
    loop {
        if outbox.stop.load(Ordering::SeqCst) {
            return;
        }
        let id = {
            let queued = outbox.retry.lock().unwrap().pop_front();
            match queued {
                Some(id) => id,
                None if outbox.no_new.load(Ordering::SeqCst) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                None => outbox.next.fetch_add(1, Ordering::SeqCst),
            }
        };
        let Ok(addr) = addrs.wait_for(Option::is_some).await.map(|a| a.unwrap()) else {
            return;
        };
        let body = notification_body(
            &invoice(id),
            1_000 + (id % 1_000) as i64,
            &format!("77310{id:010}"),
            "SUCCESS",
        );
        let headers = signed_headers(body.as_bytes(), SECRET, PATH, &format!("crash-{id}"));
        let url = format!("http://{}{PATH}", addr.http);
        match post_notification(&http, &url, body.as_bytes(), &headers).await {
            Some(s) if (200..300).contains(&s) => {
                outbox.acked.lock().unwrap().insert(id);
            }
            _ => {
                outbox.failed_attempts.fetch_add(1, Ordering::SeqCst);
                outbox.retry.lock().unwrap().push_back(id);
            }
        }
    }
}

/// What the subscriber saw.
#[derive(Default)]
struct Inbox {
    /// event_id → how many times it was delivered.
    event_ids: Mutex<BTreeMap<u64, u32>>,
    /// invoice → distinct event ids delivered for it.
    invoices: Mutex<BTreeMap<String, BTreeSet<u64>>>,
    resumes: AtomicU64,
}

async fn subscriber(
    inbox: Arc<Inbox>,
    mut addrs: watch::Receiver<Option<BoundAddrs>>,
    stop: Arc<AtomicBool>,
) {
    let mut token = resume_token(0);
    while !stop.load(Ordering::SeqCst) {
        let Ok(addr) = addrs.wait_for(Option::is_some).await.map(|a| a.unwrap()) else {
            return;
        };
        let Ok(mut client) = O2oPaymentsClient::connect(format!("http://{}", addr.grpc)).await
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let Ok(stream) = client
            .stream_notifications(pb::StreamNotificationsRequest {
                resume_token: token.clone(),
                invoice_numbers: vec![],
            })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        inbox.resumes.fetch_add(1, Ordering::SeqCst);
        let mut stream = stream.into_inner();
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                // A killed sidecar may leave the connection half open; the next incarnation
                // has a new address.
                _ = addrs.changed() => break,
            };
            match next {
                Ok(Some(r)) => {
                    let n = r.notification.unwrap();
                    *inbox
                        .event_ids
                        .lock()
                        .unwrap()
                        .entry(n.event_id)
                        .or_default() += 1;
                    inbox
                        .invoices
                        .lock()
                        .unwrap()
                        .entry(n.invoice_number)
                        .or_default()
                        .insert(n.event_id);
                    token = r.resume_token;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_notification_survives_sigkill() {
    let kills = env_u64("O2O_CRASH_KILLS", 20);
    let max_uptime = env_u64("O2O_CRASH_MAX_UPTIME_MS", 300);
    let seed = env_u64("O2O_CRASH_SEED", rand::rng().random());
    println!("crash test: kills={kills} seed={seed} max_uptime_ms={max_uptime}");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, SECRET).unwrap();
    let store = format!("sqlite://{}", dir.path().join("o2o.db").display());
    // DOKU is only needed for the sweeper; notifications for invoices the sidecar did not
    // create need no DOKU call.
    let sim = Sim::start(SimConfig::new(CLIENT_ID, SECRET)).await;
    let launch = ChildOptions {
        doku_base_url: sim.url.clone(),
        rust_log: "warn,o2o_sidecar=info".into(),
        keep_log: false,
        ..ChildOptions::new(env!("CARGO_BIN_EXE_o2o-sidecar"), &key_file, &store)
    };

    let (addrs_tx, addrs_rx) = watch::channel(None::<BoundAddrs>);
    let outbox = Arc::new(Outbox::default());
    let inbox = Arc::new(Inbox::default());
    let stop_subscriber = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(tokio::spawn(sender(
            outbox.clone(),
            addrs_rx.clone(),
            http.clone(),
        )));
    }
    let subscriber = tokio::spawn(subscriber(
        inbox.clone(),
        addrs_rx.clone(),
        stop_subscriber.clone(),
    ));

    for _ in 0..kills {
        let sidecar = ChildSidecar::start(&launch).await;
        addrs_tx.send_replace(Some(sidecar.addrs));
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=max_uptime))).await;
        addrs_tx.send_replace(None);
        sidecar.kill().await;
    }

    // The last incarnation: no new notifications; DOKU's retries drain; the subscriber catches
    // up with everything acknowledged.
    let sidecar = ChildSidecar::start(&launch).await;
    outbox.no_new.store(true, Ordering::SeqCst);
    addrs_tx.send_replace(Some(sidecar.addrs));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let retries_left = outbox.retry.lock().unwrap().len();
        let acked = outbox.acked.lock().unwrap().len() as u64;
        let sent = outbox.next.load(Ordering::SeqCst);
        if retries_left == 0 && acked == sent {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "DOKU's retries not acknowledged after 120 s: retries_left={retries_left} \
             acked={acked} sent={sent}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything is acknowledged; the subscriber gets 15 s to receive it all (what it has not
    // by then is counted as lost below).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        let acked = outbox.acked.lock().unwrap().clone();
        let all_delivered = {
            let invoices = inbox.invoices.lock().unwrap();
            acked.iter().all(|id| invoices.contains_key(&invoice(*id)))
        };
        if all_delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outbox.stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    // Anything still to come would be a duplicate: give it a moment, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_subscriber.store(true, Ordering::SeqCst);
    addrs_tx.send_replace(None);
    let (status, _) = sidecar.terminate().await;
    assert!(status.success(), "graceful stop after the run: {status}");
    subscriber.await.unwrap();

    let acked = outbox.acked.lock().unwrap().clone();
    let event_ids = inbox.event_ids.lock().unwrap().clone();
    let invoices = inbox.invoices.lock().unwrap().clone();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !invoices.contains_key(&invoice(*id)))
        .collect();
    let duplicate_event_ids = event_ids.values().filter(|n| **n > 1).count();
    let duplicate_invoices = invoices.values().filter(|ids| ids.len() > 1).count();
    let delivered = invoices.len();
    println!(
        "crash test: kills={kills} acknowledged={} delivered={delivered} lost={} \
         duplicate_event_ids={duplicate_event_ids} duplicate_invoices={duplicate_invoices} \
         failed_attempts={} resumes={} seed={seed}",
        acked.len(),
        lost.len(),
        outbox.failed_attempts.load(Ordering::SeqCst),
        inbox.resumes.load(Ordering::SeqCst),
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert_eq!(duplicate_event_ids, 0, "an event id was delivered twice");
    assert_eq!(duplicate_invoices, 0, "an invoice was emitted twice");
    assert!(
        acked.len() as u64 >= kills,
        "too little traffic to mean anything"
    );
    // Event ids are the log's sequence: gap-free from 1 (nothing was pruned).
    let ids: Vec<u64> = event_ids.keys().copied().collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
}
