//! The Debian package: built by cargo-deb from this test run's binary, installed with dpkg on this
//! machine, its systemd unit accepted by `systemd-analyze verify`, and the installed binary started
//! as the `herald` user with the installed config, answering `/health`; then purged.
//!
//! It installs a system package, so it needs root (as CI runs; .ci/run also installs cargo-deb), and
//! it leaves a machine alone where a `herald` package was installed before it ran. Elsewhere it says
//! why it did nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The longest wait for the installed binary to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let (ok, text) = run(cmd);
    assert!(ok, "{shown} failed:\n{text}");
    text
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).1.trim() == "0"
}

fn package_installed() -> bool {
    let (ok, text) = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "herald"]));
    ok && text.contains("install ok installed")
}

/// Purges the package when the test ends, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let (ok, text) = run(Command::new("dpkg").args(["--purge", "herald"]));
        if !ok {
            eprintln!("dpkg --purge herald failed:\n{text}");
        }
    }
}

/// Builds the .deb from the binary Cargo built for this test run (the dev profile; no second
/// build) into `dir`; returns its path.
fn build_deb(dir: &Path) -> PathBuf {
    let bin = common::herald_bin();
    let profile_dir = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let profile = if profile_dir == "debug" {
        "dev"
    } else {
        &profile_dir
    };
    let (ok, version) = run(Command::new("cargo").args(["deb", "--version"]));
    assert!(
        ok,
        "cargo-deb is missing: `cargo install cargo-deb --locked` (as .ci/run does)\n{version}"
    );
    must(
        Command::new("cargo")
            .current_dir(common::repo_root())
            .args([
                "deb",
                "-p",
                "herald",
                "--no-build",
                "--strip",
                "--fast",
                "--profile",
            ])
            .arg(profile)
            .arg("--output")
            .arg(dir),
    );
    let deb = std::fs::read_dir(dir)
        .expect("output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}", dir.display()));
    println!("built {}", deb.display());
    deb
}

#[test]
fn the_deb_installs_a_hardened_service_that_starts_with_its_config() {
    if !is_root() {
        println!("skipped: installing a package needs root (CI runs as root)");
        return;
    }
    if package_installed() {
        println!(
            "skipped: a herald package is installed on this machine; the test leaves it alone"
        );
        return;
    }
    let dir = common::make_temp_dir();
    let deb = build_deb(&dir);

    // What the package holds.
    let contents = must(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/herald",
        "/systemd/system/herald.service",
        "./usr/share/doc/herald/operations.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    let info = must(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(
        info.contains("Depends:") && info.contains("adduser"),
        "{info}"
    );

    // Installed on this machine (no systemd runs in CI containers: the unit is not started, which is
    // what postinst's generated fragment handles).
    let _installed = Installed;
    must(Command::new("dpkg").arg("-i").arg(&deb));
    let user = must(Command::new("getent").args(["passwd", "herald"]));
    assert!(user.contains("/usr/sbin/nologin"), "herald user: {user}");
    let stat = must(Command::new("stat").args(["-c", "%a %U %G", "/etc/herald/config.json"]));
    assert_eq!(
        stat.trim(),
        "640 root herald",
        "the config holds the keys: readable by the service only"
    );
    let config = std::fs::read_to_string("/etc/herald/config.json").expect("installed config");
    let config: serde_json::Value = serde_json::from_str(&config).expect("config is JSON");
    let key = config["http_api"]["key"].as_str().unwrap_or("");
    assert!(key.len() >= 32, "genconfig wrote a fresh API key: {config}");

    // The unit as systemd reads it.
    let unit = [
        "/lib/systemd/system/herald.service",
        "/usr/lib/systemd/system/herald.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit is installed");
    must(Command::new("systemd-analyze").args(["verify", unit]));
    let text = std::fs::read_to_string(unit).expect("unit");
    for setting in [
        "User=herald",
        "ExecStart=/usr/bin/herald serve --config /etc/herald/config.json",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(text.contains(setting), "{setting} missing from the unit");
    }

    // The installed binary, as the service would run it: the herald user, the installed config.
    // setpriv execs the binary (runuser would fork, and killing it would leave Herald running).
    let port = common::free_port();
    let mut server = Command::new("setpriv")
        .args([
            "--reuid=herald",
            "--regid=herald",
            "--init-groups",
            "--",
            "/usr/bin/herald",
            "serve",
            "--config",
        ])
        .arg("/etc/herald/config.json")
        .arg("--port")
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the installed herald");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut status = None;
    while Instant::now() < deadline {
        if let Ok(s) = common::http_get_status(port, "/health") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, Some(200), "the installed herald answers /health");

    // Purge removes the generated config.
    drop(_installed);
    assert!(!package_installed(), "purged");
    assert!(
        !Path::new("/etc/herald/config.json").exists(),
        "purge removes the config"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
