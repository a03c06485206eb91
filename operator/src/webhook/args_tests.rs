//! The webhook's duration flags: defaults, the duration forms, and the former `*-seconds` names.

use std::time::Duration;

use clap::Parser;

use super::WebhookArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: WebhookArgs,
}

fn parse(args: &[&str]) -> Result<WebhookArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.args)
}

#[test]
fn durations_default_to_30s_and_10s() {
    let a = parse(&[]).unwrap();
    assert_eq!(a.cert_check_interval, Duration::from_secs(30));
    assert_eq!(a.body_timeout, Duration::from_secs(10));
}

#[test]
fn durations_take_units_and_the_former_seconds_flags_still_work() {
    let a = parse(&[
        "--webhook-cert-check-interval=2m",
        "--webhook-body-timeout=1500ms",
    ])
    .unwrap();
    assert_eq!(a.cert_check_interval, Duration::from_secs(120));
    assert_eq!(a.body_timeout, Duration::from_millis(1500));
    let old = parse(&[
        "--webhook-cert-check-seconds=2",
        "--webhook-body-timeout-seconds",
        "7",
    ])
    .unwrap();
    assert_eq!(old.cert_check_interval, Duration::from_secs(2));
    assert_eq!(old.body_timeout, Duration::from_secs(7));
}

#[test]
fn a_malformed_duration_is_refused_naming_the_flag() {
    let err = parse(&["--webhook-body-timeout=soon"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--webhook-body-timeout"), "{err}");
}
