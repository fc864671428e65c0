//! `prepare_request` on a typical browser request (about 15 headers), against a
//! baseline of only cloning the request head (which every iteration pays too).
//!
//! `cargo xtask bench -- prepare_request`

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use proxy_core::{ClientInfo, ProxyRules};
use std::hint::black_box;

fn browser_request() -> http::request::Parts {
    Request::get("/app/static/main.js?v=1234")
        .header("host", "www.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("accept-language", "en-US,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("referer", "https://www.example.com/app/")
        .header("connection", "keep-alive")
        .header(
            "cookie",
            "session=0123456789abcdef; theme=dark; consent=yes",
        )
        .header("upgrade-insecure-requests", "1")
        .header("sec-fetch-dest", "script")
        .header("sec-fetch-mode", "no-cors")
        .header("sec-fetch-site", "same-origin")
        .header("priority", "u=2")
        .header("pragma", "no-cache")
        .header("cache-control", "no-cache")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn bench(c: &mut Criterion) {
    let rules = ProxyRules::new("http://127.0.0.1:3000").unwrap();
    let client = ClientInfo::new("192.0.2.10".parse().unwrap());
    let template = browser_request();
    let mut group = c.benchmark_group("prepare_request");
    group.bench_function("clone_only_baseline", |b| {
        b.iter(|| black_box(template.clone()));
    });
    group.bench_function("browser_15_headers", |b| {
        b.iter(|| {
            let mut parts = template.clone();
            let prepared = rules.prepare_request(&mut parts, &client).unwrap();
            black_box((parts, prepared))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
