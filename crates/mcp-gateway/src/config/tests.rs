// figment::Jail fixes the closures' error type to figment::Error; its size is
// not ours to change.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use figment::Jail;

use super::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn repo_overrides() -> Overrides {
    Overrides {
        policies: Some(repo().join("policies")),
        profiles: Some(repo().join("sandbox-profiles")),
        ..Default::default()
    }
}

#[test]
fn defaults_validate_and_derive_paths_from_data_dir() {
    Jail::expect_with(|_| {
        let cfg = load(None, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(cfg.database_url, "sqlite://data/gateway.db");
        assert_eq!(cfg.files_root, PathBuf::from("data/files"));
        assert_eq!(cfg.sockets_dir, PathBuf::from("data/sockets"));
        assert_eq!(cfg.request_limits.default_timeout.as_secs(), 30);
        Ok(())
    });
}

#[test]
fn the_old_workspaces_dir_key_still_sets_the_sockets_dir() {
    Jail::expect_with(|jail| {
        jail.create_file("old.toml", "[sandbox]\nworkspaces_dir = \"/srv/ws\"\n")?;
        let cfg =
            load(Some(Path::new("old.toml")), &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(cfg.sockets_dir, PathBuf::from("/srv/ws"));
        assert_eq!(cfg.sandbox_settings().sockets_dir, PathBuf::from("/srv/ws"));
        // The new name wins when a file has both.
        jail.create_file(
            "both.toml",
            "[sandbox]\nworkspaces_dir = \"/srv/ws\"\nsockets_dir = \"/srv/sock\"\n",
        )?;
        let cfg =
            load(Some(Path::new("both.toml")), &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(cfg.sockets_dir, PathBuf::from("/srv/sock"));
        jail.set_env("MCP_GATEWAY_SANDBOX__WORKSPACES_DIR", "/srv/env");
        let cfg = load(None, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(cfg.sockets_dir, PathBuf::from("/srv/env"));
        Ok(())
    });
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "gw.toml",
            "[server]\nlisten = \"127.0.0.1:9000\"\n[limits]\nmax_output_bytes = 10\nmax_timeout_secs = 99\n",
        )?;
        jail.set_env("MCP_GATEWAY_LIMITS__MAX_OUTPUT_BYTES", "20");
        jail.set_env("MCP_GATEWAY_SERVER__LISTEN", "127.0.0.1:9001");
        // Client-side variables share the prefix and must not break the server.
        jail.set_env("MCP_GATEWAY_ENDPOINT", "http://127.0.0.1:1");
        let mut o = repo_overrides();
        let cfg = load(Some(Path::new("gw.toml")), &o).map_err(|e| e.to_string())?;
        assert_eq!(cfg.listen.port(), 9001, "env beats file");
        assert_eq!(cfg.max_output_bytes, 20, "env beats file");
        assert_eq!(
            cfg.request_limits.max_timeout.as_secs(),
            99,
            "file beats defaults"
        );
        o.listen = Some("127.0.0.1:9002".into());
        let cfg = load(Some(Path::new("gw.toml")), &o).map_err(|e| e.to_string())?;
        assert_eq!(cfg.listen.port(), 9002, "flags beat env");
        Ok(())
    });
}

#[test]
fn every_problem_is_reported_at_once() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            "[server]\nlisten = \"0.0.0.0:8081\"\n[sandbox]\nuid = 0\n[limits]\ndefault_timeout_secs = 700\n[log]\nformat = \"xml\"\n",
        )?;
        let err = load(Some(Path::new("bad.toml")), &repo_overrides()).unwrap_err();
        let ConfigError::Invalid { problems } = err;
        let all = problems.join("\n");
        assert!(all.contains("not a loopback address"), "{all}");
        assert!(all.contains("must not be 0"), "{all}");
        assert!(all.contains("above limits.max_timeout_secs"), "{all}");
        assert!(all.contains("log.format"), "{all}");
        assert_eq!(problems.len(), 4, "{all}");
        Ok(())
    });
}

#[test]
fn unknown_keys_and_missing_files_are_errors() {
    Jail::expect_with(|jail| {
        jail.create_file("typo.toml", "[server]\nlisen = \"127.0.0.1:1\"\n")?;
        let err = load(Some(Path::new("typo.toml")), &repo_overrides()).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = load(Some(Path::new("nope.toml")), &repo_overrides()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        Ok(())
    });
}

#[test]
fn non_loopback_is_allowed_only_with_explicit_insecure_flag() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "open.toml",
            "[server]\nlisten = \"0.0.0.0:8081\"\ninsecure_no_auth = true\n",
        )?;
        let cfg =
            load(Some(Path::new("open.toml")), &repo_overrides()).map_err(|e| e.to_string())?;
        assert!(cfg.insecure_no_auth);
        Ok(())
    });
}

#[test]
fn telemetry_comes_from_the_file_then_otel_variables_then_our_own() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        let cfg = load(None, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(cfg.telemetry.otlp_endpoint, None, "no endpoint, no export");
        assert_eq!(cfg.telemetry.service_name, "mcp-gateway");
        assert_eq!(cfg.http.request_timeout.as_secs(), 30);

        jail.create_file(
            "t.toml",
            "[telemetry]\notlp_endpoint = \"http://file:4317\"\nsample_ratio = 0.5\n[http]\nmax_body_bytes = 10\n",
        )?;
        let file = Some(Path::new("t.toml"));
        let cfg = load(file, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(
            cfg.telemetry.otlp_endpoint.as_deref(),
            Some("http://file:4317")
        );
        assert_eq!(cfg.telemetry.sample_ratio, 0.5);
        assert_eq!(cfg.http.max_body_bytes, 10);

        jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317");
        jail.set_env("OTEL_SERVICE_NAME", "gw-eu-1");
        jail.set_env("OTEL_TRACES_SAMPLER_ARG", "0.25");
        let cfg = load(file, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(
            cfg.telemetry.otlp_endpoint.as_deref(),
            Some("http://otel:4317")
        );
        assert_eq!(cfg.telemetry.service_name, "gw-eu-1");
        assert_eq!(cfg.telemetry.sample_ratio, 0.25);

        jail.set_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317");
        let cfg = load(file, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(
            cfg.telemetry.otlp_endpoint.as_deref(),
            Some("http://traces:4317")
        );

        jail.set_env("MCP_GATEWAY_TELEMETRY__OTLP_ENDPOINT", "http://ours:4317");
        let cfg = load(file, &repo_overrides()).map_err(|e| e.to_string())?;
        assert_eq!(
            cfg.telemetry.otlp_endpoint.as_deref(),
            Some("http://ours:4317")
        );
        Ok(())
    });
}

#[test]
fn bad_http_and_telemetry_settings_are_reported_together() {
    Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "bad.toml",
            "[http]\nmax_concurrent_requests = 0\nrequest_timeout_secs = 0\n[telemetry]\notlp_endpoint = \"collector:4317\"\nsample_ratio = 2.0\nservice_name = \" \"\n",
        )?;
        let err = load(Some(Path::new("bad.toml")), &repo_overrides()).unwrap_err();
        let ConfigError::Invalid { problems } = err;
        let all = problems.join("\n");
        for needle in [
            "http.max_concurrent_requests",
            "http.request_timeout_secs",
            "telemetry.otlp_endpoint",
            "telemetry.sample_ratio",
            "telemetry.service_name",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        assert_eq!(problems.len(), 5, "{all}");
        Ok(())
    });
}
