//! What can be checked of the Dockerfile and docker-compose.yml without a Docker engine: the
//! files they copy exist, the image runs the binary as a non-root user, and every setting the
//! compose file passes is one the binary reads.

use std::collections::BTreeMap;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_moment-mandates");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{name}")).unwrap()
}

#[test]
fn the_dockerfile_builds_from_files_that_exist_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a run stage");
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                std::path::Path::new(&format!("{ROOT}/{src}")).exists(),
                "COPY source {src} is missing"
            );
        }
    }
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    let user = user.trim_start_matches("USER ").trim();
    assert!(
        user != "root" && user != "0",
        "the image must not run as root"
    );
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"{}\"]", env!("CARGO_PKG_NAME"))));
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"));
    assert!(
        ignore.lines().any(|l| l.trim() == ".env"),
        "secrets stay out of the build context"
    );
}

/// `service name -> environment variable names`, read from the compose file's layout.
fn compose_environments(compose: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut service, mut in_env) = (None::<String>, false);
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        match indent {
            0 => service = None,
            2 => {
                service = Some(text.trim_end_matches(':').to_owned());
                in_env = false;
            }
            4 => in_env = text == "environment:",
            6 if in_env => {
                if let (Some(s), Some((key, _))) = (&service, text.split_once(':')) {
                    out.entry(s.clone()).or_default().push(key.to_owned());
                }
            }
            _ => {}
        }
    }
    out
}

fn help(command: &str) -> String {
    let out = Command::new(BIN)
        .args([command, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn compose_runs_postgres_the_service_and_the_simulator_with_settings_they_read() {
    let compose = read("docker-compose.yml");
    let envs = compose_environments(&compose);
    assert!(
        envs.contains_key("postgres") && envs.contains_key("service") && envs.contains_key("sim")
    );
    assert!(
        compose.contains("pgdata:/var/lib/postgresql/data"),
        "a named volume"
    );
    assert!(compose.contains("healthcheck:") && compose.contains("pg_isready"));
    assert!(compose.contains("condition: service_healthy"));
    for (service, command) in [("service", "serve"), ("sim", "sim")] {
        let help = help(command);
        for var in &envs[service] {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{service} is given {var}, which `{command}` does not read"
            );
        }
    }
    // The service reaches the simulator, and the simulator's webhooks reach the service, with
    // the same local secrets.
    assert!(compose.contains("MOMENT_API_URL: ${MOMENT_API_URL:-http://sim:8081}"));
    assert!(compose.contains("SIM_WEBHOOK_URL: http://service:8080/webhooks/moment"));
    let secret = |key: &str| {
        compose
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split("whsec_").nth(1))
            .map(|s| s.trim_end_matches('}').to_owned())
    };
    assert_eq!(
        secret("MOMENT_WEBHOOK_SECRETS:"),
        secret("SIM_WEBHOOK_SECRET:")
    );
}
