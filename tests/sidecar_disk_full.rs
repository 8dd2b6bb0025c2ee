//! A provenance write failure ends the daemon through its bounded shutdown:
//! the real `selfheal run` is started with a file-size limit (`ulimit -f`,
//! RLIMIT_FSIZE) so its provenance log, pre-filled near the limit, hits "File
//! too large" (EFBIG) within seconds, as a full disk would stop it. Then the process must exit
//! non-zero within a bound, name the cause on stderr, and have written its
//! Q-table checkpoint on the way out.
//!
//! Why this simulation: it needs no root, no mount and no special file, and
//! works the same on a developer machine and in CI. `SIGXFSZ` is ignored
//! (`trap '' XFSZ`, inherited through `exec`), so the write returns EFBIG
//! instead of killing the process. stderr is a pipe, which the limit does
//! not touch, so the daemon can always say why it stopped. The checkpoint
//! (2.5 MB) stays under the limit; `checkpoint_every` is set out of reach
//! so only the shutdown path can write it.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ulimit -f` in the blocks of the shell (512 bytes in POSIX `sh`, 1024 in
/// bash): above the 2.5 MB checkpoint either way. The real limit in bytes is
/// measured with a probe, and the log is pre-filled to 64 KiB below it so the
/// daemon reaches it within seconds.
const FSIZE_BLOCKS: u32 = 8192;

/// The file-size limit in bytes `sh` sets for `ulimit -f FSIZE_BLOCKS`: what
/// `head` manages to write under it.
fn measured_limit(dir: &std::path::Path) -> u64 {
    let probe = dir.join("probe");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {FSIZE_BLOCKS} || exit 99; head -c 50000000 /dev/zero > \"$0\""))
        .arg(&probe)
        .status()
        .expect("run sh (a POSIX shell is needed)");
    assert_ne!(st.code(), Some(99), "sh could not set the file-size limit");
    let n = std::fs::metadata(&probe).unwrap().len();
    std::fs::remove_file(&probe).unwrap();
    assert!((4 << 20..50_000_000).contains(&n), "ulimit -f {FSIZE_BLOCKS} allowed {n} bytes");
    n
}

#[test]
fn a_provenance_write_failure_shuts_down_bounded_with_a_checkpoint_and_a_nonzero_exit() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let cfg_path = work.path().join("sidecar.toml");
    std::fs::write(
        &cfg_path,
        "[source]\nkind = \"simulator\"\ntick_ms = 20\n\n[daemon]\ncheckpoint_every = 100000000\nshutdown_grace_secs = 5\n",
    )
    .unwrap();
    // Valid records of an earlier run, up to 64 KiB below the limit.
    let limit = measured_limit(work.path());
    std::fs::create_dir_all(&state).unwrap();
    let line = r#"{"kind":"outcome","id":"earlier-1","ts_ms":1,"status":"succeeded","detail":"an earlier run"}"#;
    let lines = (limit as usize - (64 << 10)) / (line.len() + 1);
    std::fs::write(state.join("provenance.jsonl"), format!("{line}\n").repeat(lines)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let control = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {FSIZE_BLOCKS} || exit 99; exec \"$0\" \"$@\""))
        .arg(bin())
        .args(["run", "--listen", &listen, "--control-listen", &control, "--state-dir"])
        .arg(&state)
        .arg("--config")
        .arg(&cfg_path)
        .env("SELFHEAL_CONTROL_TOKEN", TEST_TOKEN)
        .env("NO_COLOR", "1")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sh -c 'ulimit -f …; exec selfheal run …' (needs a POSIX sh)");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    // The log fills in seconds; the shutdown grace is 5 s; 90 s covers a slow CI box.
    let bound = Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("selfheal run still running {bound:?} after start under a {limit}-byte file limit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap();
    let tail: String =
        stderr.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert_ne!(status.code(), Some(99), "the shell could not set the file-size limit");
    assert!(!status.success(), "exit status {status} after a provenance write failure:\n{tail}");
    assert_eq!(status.code(), Some(1), "not an orderly error exit (a signal?): {status}\n{tail}");
    // The cause, named: the OS error and the log it hit.
    assert!(stderr.contains("File too large"), "stderr does not name EFBIG:\n{tail}");
    assert!(stderr.contains("provenance.jsonl"), "stderr does not name the log:\n{tail}");
    assert!(stderr.contains("shutting down"), "the loop did not say it is shutting down:\n{tail}");
    // The log really hit the limit (this is the failure we meant to cause).
    let log_len = std::fs::metadata(state.join("provenance.jsonl")).unwrap().len();
    assert!(log_len + 4096 > limit, "the log is {log_len} bytes, not at the {limit}-byte limit");
    // The bounded shutdown saved the Q table (only it can: checkpoint_every is out of reach).
    let checkpoint = state.join("policy.json");
    assert!(checkpoint.exists(), "no checkpoint after the failure:\n{tail}");
    selfheal_agent::store::ModelFile::load(&checkpoint)
        .unwrap_or_else(|e| panic!("the checkpoint written on the way out does not load: {e}"));
}
