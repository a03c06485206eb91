//! Tests of the per-vault rate limiter.

use super::*;

fn limiter(creates: u32, other: u32, max_wait_s: u64) -> RateLimiter {
    RateLimiter::new(RateLimits {
        creates,
        other,
        window: Duration::from_secs(10),
        margin: Duration::ZERO,
        max_wait: Duration::from_secs(max_wait_s),
    })
}

/// At most `limit` of `starts` fall in any half-open window of length `window`.
fn max_in_any_window(starts: &[Instant], window: Duration) -> usize {
    starts
        .iter()
        .map(|&s| starts.iter().filter(|&&t| t >= s && t < s + window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn creates_never_exceed_ten_per_ten_seconds_per_vault() {
    let limiter = limiter(10, 500, 600);
    let mut tasks = Vec::new();
    for _ in 0..35 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            limiter
                .acquire("a.vault.azure.net", CallClass::Create)
                .await
                .expect("slot");
            Instant::now()
        }));
    }
    let mut starts = Vec::new();
    for t in tasks {
        starts.push(t.await.expect("task"));
    }
    assert_eq!(max_in_any_window(&starts, Duration::from_secs(10)), 10);
    // 35 creates need 4 windows: the last starts 30 s after the first.
    let first = *starts.iter().min().expect("some");
    let last = *starts.iter().max().expect("some");
    assert_eq!(last - first, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_margin_widens_the_window() {
    let limiter = RateLimiter::new(RateLimits {
        creates: 1,
        margin: Duration::from_millis(500),
        ..RateLimits::default()
    });
    limiter.acquire("a", CallClass::Create).await.expect("slot");
    let waited = limiter
        .acquire("a", CallClass::Create)
        .await
        .expect("slot")
        .waited();
    assert_eq!(waited, Duration::from_millis(10_500));
}

#[tokio::test(start_paused = true)]
async fn vaults_and_classes_have_separate_windows() {
    let limiter = limiter(2, 3, 600);
    let t0 = Instant::now();
    for _ in 0..2 {
        limiter.acquire("a", CallClass::Create).await.expect("slot");
        limiter.acquire("b", CallClass::Create).await.expect("slot");
    }
    for _ in 0..3 {
        limiter.acquire("a", CallClass::Other).await.expect("slot");
    }
    // Nothing above had to wait.
    assert_eq!(Instant::now(), t0);
    // The third create on "a" waits for the window.
    let waited = limiter
        .acquire("a", CallClass::Create)
        .await
        .expect("slot")
        .waited();
    assert_eq!(waited, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_wait_beyond_max_wait_is_refused_as_throttled_without_taking_a_slot() {
    let limiter = limiter(1, 1, 5);
    limiter.acquire("a", CallClass::Create).await.expect("slot");
    let err = limiter
        .acquire("a", CallClass::Create)
        .await
        .expect_err("too long");
    match err {
        KeyVaultError::Throttled { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_secs(10))
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    // The refused call took no slot: after the window the next call starts at once.
    tokio::time::advance(Duration::from_secs(10)).await;
    let waited = limiter
        .acquire("a", CallClass::Create)
        .await
        .expect("slot")
        .waited();
    assert_eq!(waited, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_429_backs_off_every_caller_of_that_vault_only() {
    let limiter = limiter(10, 500, 60);
    limiter.back_off("a", Duration::from_secs(7));
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        limiter.acquire("a", CallClass::Other),
        limiter.acquire("b", CallClass::Other)
    );
    assert_eq!(a.expect("slot").waited(), Duration::from_secs(7));
    assert_eq!(b.expect("slot").waited(), Duration::ZERO);
    assert_eq!(Instant::now() - t0, Duration::from_secs(7));
    // A shorter Retry-After never shortens a longer back-off.
    limiter.back_off("a", Duration::from_secs(20));
    limiter.back_off("a", Duration::from_secs(1));
    let waited = limiter
        .acquire("a", CallClass::Other)
        .await
        .expect("slot")
        .waited();
    assert_eq!(waited, Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn a_back_off_set_while_waiting_is_honoured() {
    let limiter = limiter(1, 1, 60);
    limiter.acquire("a", CallClass::Other).await.expect("slot");
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire("a", CallClass::Other).await })
    };
    // The waiter has a slot at t=10; a 429 at t=1 says "retry after 30 s".
    tokio::time::sleep(Duration::from_secs(1)).await;
    limiter.back_off("a", Duration::from_secs(30));
    let waited = waiter.await.expect("task").expect("slot").waited();
    assert_eq!(waited, Duration::from_secs(31));
}

#[tokio::test(start_paused = true)]
async fn the_window_runs_from_completion_and_waits_for_calls_in_flight() {
    let limiter = limiter(1, 1, 60);
    let first = limiter.acquire("a", CallClass::Create).await.expect("slot");
    let second = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire("a", CallClass::Create).await })
    };
    // The first call takes 4 s (a slow answer): the service may have counted it as late as
    // its completion, so the next one starts a window after that, not after its start.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!second.is_finished());
    drop(first);
    let waited = second.await.expect("task").expect("slot").waited();
    assert_eq!(waited, Duration::from_secs(14));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_past_max_wait_refuses_the_next() {
    let limiter = limiter(1, 1, 5);
    let _stuck = limiter.acquire("a", CallClass::Create).await.expect("slot");
    let err = limiter
        .acquire("a", CallClass::Create)
        .await
        .expect_err("refused");
    assert!(matches!(err, KeyVaultError::Throttled { .. }), "{err:?}");
}

/// Starts of `n` calls made at once for `namespace` (share `percent`), each taking `hold`.
fn flood(
    limiter: &RateLimiter,
    namespace: &'static str,
    percent: u32,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Instant>> {
    (0..n)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(with_namespace_share(namespace, percent, async move {
                limiter.acquire("a", CallClass::Other).await.expect("slot");
                Instant::now()
            }))
        })
        .collect()
}

async fn starts(tasks: Vec<tokio::task::JoinHandle<Instant>>) -> Vec<Instant> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_namespace_alone_on_a_vault_uses_the_whole_budget() {
    // Its share (half) is what it is sure of when others want the vault too, not a cap on a
    // budget nobody else uses.
    let limiter = limiter(10, 10, 600);
    let t0 = Instant::now();
    let calls = starts(flood(&limiter, "only", 50, 30)).await;
    let window = Duration::from_secs(10);
    assert_eq!(max_in_any_window(&calls, window), 10);
    let last = calls.iter().map(|&t| t - t0).max().expect("some");
    assert_eq!(last, 2 * window, "30 calls in three windows, not six");
}

#[tokio::test(start_paused = true)]
async fn one_namespace_cannot_starve_another_on_a_shared_vault() {
    let limiter = limiter(10, 10, 600);
    let t0 = Instant::now();
    // A namespace with many bindings asks for 60 calls at once (alone, it takes the whole first
    // window), then another asks for 5.
    let noisy = flood(&limiter, "noisy", 50, 60);
    tokio::task::yield_now().await;
    let quiet = flood(&limiter, "quiet", 50, 5);
    let noisy = starts(noisy).await;
    let quiet = starts(quiet).await;
    let window = Duration::from_secs(10);
    // The quiet namespace is served as soon as slots open again, not after the noisy one's
    // 60 calls: the noisy calls beyond their share yield to it.
    assert!(
        quiet.iter().all(|&t| t - t0 == window),
        "{:?}",
        quiet.iter().map(|t| *t - t0).collect::<Vec<_>>()
    );
    // While the quiet one waited, the noisy one took no more than its half.
    let noisy_meanwhile: Vec<Instant> = noisy
        .iter()
        .copied()
        .filter(|&t| t - t0 >= window && t - t0 < 2 * window)
        .collect();
    assert_eq!(noisy_meanwhile.len(), 5);
    // And the vault never exceeds its limit.
    let all: Vec<Instant> = noisy.iter().chain(&quiet).copied().collect();
    assert_eq!(max_in_any_window(&all, window), 10);
}

#[tokio::test(start_paused = true)]
async fn without_shares_the_first_namespace_takes_every_slot() {
    // The same load with every namespace allowed the whole budget (share 100): nothing yields,
    // and the quiet namespace waits behind the noisy one's calls; the test above would fail
    // like this.
    let limiter = limiter(10, 10, 600);
    let t0 = Instant::now();
    let noisy = flood(&limiter, "noisy", 100, 60);
    tokio::task::yield_now().await;
    let quiet = flood(&limiter, "quiet", 100, 5);
    let _ = starts(noisy).await;
    let quiet = starts(quiet).await;
    assert!(
        quiet.iter().any(|&t| t - t0 > Duration::from_secs(10)),
        "{:?}",
        quiet.iter().map(|t| *t - t0).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_waiting_is_not_yielded_to() {
    let limiter = limiter(2, 2, 600);
    // "noisy" (one slot of two is its share) takes both slots, nobody else wanting them.
    for _ in 0..2 {
        let l = limiter.clone();
        with_namespace_share("noisy", 50, async move {
            drop(l.acquire("a", CallClass::Create).await.expect("slot"))
        })
        .await;
    }
    // "quiet" waits for the next slot, then gives up (its reconcile is cancelled).
    let quiet = {
        let l = limiter.clone();
        tokio::spawn(with_namespace_share("quiet", 50, async move {
            l.acquire("a", CallClass::Create).await.map(|_| ())
        }))
    };
    let noisy = {
        let l = limiter.clone();
        tokio::spawn(with_namespace_share("noisy", 50, async move {
            let a = l.acquire("a", CallClass::Create).await.expect("slot");
            let b = l.acquire("a", CallClass::Create).await.expect("slot");
            (a.waited(), b.waited())
        }))
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    quiet.abort();
    // Both of noisy's calls start when the window opens: the second, beyond its share, yields
    // to no one (it would wait for "quiet" until refused if "quiet" were still counted).
    let (a, b) = noisy.await.expect("task");
    assert_eq!(a, Duration::from_secs(10));
    assert_eq!(b, Duration::ZERO);
}

#[test]
fn a_share_is_a_percentage_of_the_limit_and_at_least_one() {
    assert_eq!(share_of(500, 50), 250);
    assert_eq!(share_of(10, 50), 5);
    assert_eq!(share_of(10, 1), 1);
    assert_eq!(share_of(10, 100), 10);
    assert_eq!(share_of(10, 250), 10);
}

#[tokio::test(start_paused = true)]
async fn calls_outside_a_namespace_use_the_vault_budget_only() {
    let limiter = limiter(10, 4, 600);
    let t0 = Instant::now();
    for _ in 0..4 {
        limiter.acquire("a", CallClass::Other).await.expect("slot");
    }
    assert_eq!(Instant::now(), t0);
    // And the namespace windows are forgotten once empty.
    with_namespace_share("x", 50, async {
        let _p = limiter.acquire("b", CallClass::Other).await.expect("slot");
    })
    .await;
    tokio::time::advance(Duration::from_secs(11)).await;
    limiter.acquire("b", CallClass::Other).await.expect("slot");
    let vaults = limiter.lock();
    assert!(vaults["b"].namespaces.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_back_off_longer_than_max_wait_is_refused() {
    let limiter = limiter(10, 10, 5);
    limiter.back_off("a", Duration::from_secs(8));
    let err = limiter
        .acquire("a", CallClass::Other)
        .await
        .expect_err("too long");
    assert!(
        matches!(err, KeyVaultError::Throttled { retry_after, .. } if retry_after == Duration::from_secs(8)),
        "{err:?}"
    );
}
