//! Opens `report.html` in headless Chromium (Debian's `chromium`, kept off the
//! network): the DOM holds the policy table, the evaluation table and at least
//! four SVG charts; the page requests nothing but itself; the evaluation numbers
//! in the DOM equal `selfheal evaluate --format json` for the same seeds; and a
//! screenshot renders.

mod common;

use common::headless_chromium;
use std::path::Path;
use std::process::Command;

fn selfheal(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_selfheal")).args(args).output().expect("selfheal runs");
    assert!(out.status.success(), "selfheal {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Run chromium headless, off the network, with a fresh profile.
fn run_chromium(extra: &[String], url: &str, profile: &Path) -> std::process::Output {
    headless_chromium(profile, "MAP * ~NOTFOUND").args(extra).arg(url).output().expect("chromium starts")
}

/// Attribute values of `attr` in `html` (double-quoted).
fn attrs<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let pat = format!("{attr}=\"");
    html.match_indices(&pat)
        .filter_map(|(i, _)| {
            let rest = &html[i + pat.len()..];
            rest.find('"').map(|e| &rest[..e])
        })
        .collect()
}

/// URLs of the requests a page initiated, from a chromium net log.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog).expect("chromium wrote a net log");
    let log: serde_json::Value = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(','))))
        .expect("net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64().expect("event type known");
    log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job) && e["params"]["url"].is_string())
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .map(|e| e["params"]["url"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The network check itself catches a page that fetches something.
#[test]
fn net_log_check_catches_a_page_that_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("leaky.html");
    std::fs::write(&page, "<!DOCTYPE html><html><body><img src=\"http://leak.invalid/pixel.png\"></body></html>")
        .unwrap();
    let netlog = dir.path().join("net.json");
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let out = run_chromium(
        &["--dump-dom".into(), format!("--log-net-log={}", netlog.display())],
        &url,
        &dir.path().join("p"),
    );
    assert!(out.status.success());
    let requests = page_requests(&netlog);
    assert!(requests.iter().any(|u| u.contains("leak.invalid")), "{requests:?}");
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

#[test]
fn report_html_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    selfheal(&["report", "--out", out.to_str().unwrap()]);
    let html_path = out.join("report.html").canonicalize().unwrap();
    let html = std::fs::read_to_string(&html_path).unwrap();

    // Static check: nothing in the page points outside it.
    for attr in ["src", "href", "xlink:href", "action"] {
        let refs = attrs(&html, attr);
        assert!(refs.is_empty(), "report.html has {attr} references {refs:?}; it must be self-contained");
    }
    for bad in ["<script", "<link", "@import", "url(", "@font-face", "<iframe", "<img"] {
        assert!(!html.contains(bad), "report.html contains {bad}");
    }

    // The DOM, as chromium builds it, with a net log of every request.
    let url = format!("file://{}", html_path.display());
    let netlog = dir.path().join("net.json");
    let dom = run_chromium(
        &[
            "--dump-dom".into(),
            format!("--log-net-log={}", netlog.display()),
            "--net-log-capture-mode=Everything".into(),
        ],
        &url,
        &dir.path().join("profile1"),
    );
    let dom_text = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.status.success() && dom_text.contains("</html>"),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(dom_text.contains("id=\"policy-table\""), "the DOM has the policy table");
    assert!(dom_text.contains("id=\"eval-table\""), "the DOM has the evaluation table");
    let svgs = dom_text.matches("<svg").count();
    assert!(svgs >= 4, "the DOM has {svgs} SVG charts, expected at least 4");
    let policy_rows = dom_text.matches("<tr data-state=").count();
    assert!(policy_rows > 1000, "policy table rows: {policy_rows}");

    // No network: the page itself requested nothing. (A file:// page is not
    // loaded through the network stack; the browser's own background requests,
    // refused by the resolver rule, carry the initiator "not an origin".)
    let requests = page_requests(&netlog);
    assert!(requests.is_empty(), "the page made network requests: {requests:?}");

    // The evaluation numbers in the DOM equal evaluate's JSON for the same (default) seeds.
    let eval: serde_json::Value = serde_json::from_str(&selfheal(&["evaluate", "--format", "json"])).unwrap();
    let table = &dom_text[dom_text.find("id=\"eval-table\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let mut checked = 0;
    for p in eval["policies"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let row_start = table.find(&format!("<tr data-policy=\"{name}\">")).unwrap_or_else(|| panic!("row {name}"));
        let row = &table[row_start..];
        let row = &row[..row.find("</tr>").unwrap()];
        for (i, _) in row.match_indices("<td data-key=\"") {
            let cell = &row[i + 14..];
            let key = &cell[..cell.find('"').unwrap()];
            let vstart = cell.find("data-value=\"").unwrap() + 12;
            let shown: Vec<f64> = cell[vstart..][..cell[vstart..].find('"').unwrap()]
                .split(' ')
                .map(|x| x.parse::<f64>().unwrap_or_else(|_| panic!("{name}.{key}: {x:?}")))
                .collect();
            let want: Vec<f64> = match &p[key] {
                serde_json::Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect(),
                v => vec![v.as_f64().unwrap_or(f64::NAN)],
            };
            assert_eq!(shown.len(), want.len(), "{name}.{key}");
            for (s, w) in shown.iter().zip(&want) {
                assert!(same(*s, *w), "{name}.{key}: the page shows {s}, evaluate says {w}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 5 * 13, "checked {checked} numbers");

    // A screenshot renders.
    let png = dir.path().join("report.png");
    let shot = run_chromium(
        &[format!("--screenshot={}", png.display()), "--window-size=1280,4000".into()],
        &url,
        &dir.path().join("profile2"),
    );
    assert!(shot.status.success(), "screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "a real PNG ({} bytes)", bytes.len());
}
