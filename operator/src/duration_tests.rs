use std::time::Duration;

use super::parse_duration;

#[test]
fn friendly_iso_and_bare_forms_parse() {
    let cases = [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("90s", Duration::from_secs(90)),
        ("2m", Duration::from_secs(120)),
        ("10m", Duration::from_secs(600)),
        ("1h30m", Duration::from_secs(5400)),
        ("24h", Duration::from_secs(86_400)),
        ("2 hours", Duration::from_secs(7200)),
        ("PT10M", Duration::from_secs(600)),
        ("7", Duration::from_secs(7)),
        (" 30s ", Duration::from_secs(30)),
    ];
    for (text, want) in cases {
        assert_eq!(parse_duration(text), Ok(want), "{text:?}");
    }
}

#[test]
fn words_negatives_and_empty_text_are_refused_with_the_text() {
    for text in ["soon", "-5m", "", "5 parsecs"] {
        let err = parse_duration(text).expect_err(text);
        assert!(err.contains(&format!("{:?}", text.trim())), "{err}");
    }
}
