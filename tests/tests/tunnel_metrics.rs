//! The tunnel gauge (`proxy_tunnels_open`) counts tunnel tasks alive,
//! however they end: a task dropped unfinished (its runtime shut down, a
//! panic) takes its tunnel out of the gauge too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use e2e_tests::*;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use proxy_tower::ReverseProxy;

/// A recorder that keeps the gauge of open tunnels, and nothing else.
#[derive(Default)]
struct OpenTunnels(Arc<AtomicU64>);

impl OpenTunnels {
    fn value(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Acquire))
    }
}

impl Recorder for OpenTunnels {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match key.name() {
            proxy_tower::metrics::TUNNELS_OPEN => Gauge::from_arc(self.0.clone()),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// A tunnel open when its runtime shuts down: the task is dropped without
/// reaching any of its ends, and the gauge still comes back to 0. (It was
/// decremented at each end of the task, so it stayed at 1.)
#[test]
fn open_tunnels_gauge_returns_to_zero_when_the_task_is_dropped() {
    let recorder = OpenTunnels::default();
    // This thread's recorder: the proxy registers its handles with it when
    // built, and the runtime below runs and drops its tasks on this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ends = rt.block_on(async {
        let (upstream, mut heads) = raw_upstream().await;
        let proxy = ReverseProxy::new(&format!("http://{upstream}")).unwrap();
        let addr = serve(proxy).await;
        open_tunnel(addr, &mut heads, "websocket").await
    });
    assert_eq!(recorder.value(), 1.0, "one tunnel open");
    drop(rt);
    assert_eq!(recorder.value(), 0.0, "the dropped tunnel is still counted");
    drop(ends);
}
