//! The admin CLI, driven as an admin would: the real binary, on the embedded default and on
//! Postgres, with every error case giving one line on stderr and a non-zero exit.

use serde_json::Value;

use crate::harness::{ssh_fingerprint, ssh_keygen, PgDb, Wharf};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The full account lifecycle; the same body runs on SQLite and Postgres.
fn lifecycle(w: &Wharf) {
    let pw = "correct horse battery staple";
    w.run_stdin(
        &["user", "add", "acme-pay", "--password-stdin"],
        Some(&format!("{pw}\n")),
    )
    .ok();

    let list = json(&w.run(&["user", "list", "--json"]).ok().stdout);
    assert_eq!(list[0]["username"], "acme-pay");
    assert_eq!(list[0]["enabled"], true);
    assert_eq!(list[0]["has_password"], true);
    assert_eq!(
        list[0]["permissions"],
        serde_json::json!(["list", "upload", "overwrite", "rename", "mkdir"])
    );

    // Keys: from a file and from stdin, fingerprints exactly as ssh-keygen prints them.
    let ed = ssh_keygen(w.path(), "ed", "ed25519", None);
    let rsa = ssh_keygen(w.path(), "rsa", "rsa", Some(3072));
    let ec = ssh_keygen(w.path(), "ec", "ecdsa", Some(521));
    w.run(&["user", "key", "add", "acme-pay", ed.to_str().unwrap()])
        .ok();
    let both = format!(
        "{}\n# a comment\n\n{}",
        std::fs::read_to_string(&rsa).unwrap(),
        std::fs::read_to_string(&ec).unwrap()
    );
    w.run_stdin(&["user", "key", "add", "acme-pay", "-"], Some(&both))
        .ok();
    let keys = json(
        &w.run(&["user", "key", "list", "acme-pay", "--json"])
            .ok()
            .stdout,
    );
    let fps: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(
        fps,
        [
            ssh_fingerprint(&ed),
            ssh_fingerprint(&rsa),
            ssh_fingerprint(&ec)
        ]
    );
    assert_eq!(keys[1]["algorithm"], "ssh-rsa");
    assert_eq!(keys[2]["algorithm"], "ecdsa-sha2-nistp521");
    w.run(&["user", "key", "add", "acme-pay", ed.to_str().unwrap()])
        .fails_with(&["already has key", &ssh_fingerprint(&ed)]);
    w.run(&["user", "key", "rm", "acme-pay", &ssh_fingerprint(&rsa)])
        .ok();
    w.run(&["user", "key", "rm", "acme-pay", &ssh_fingerprint(&rsa)])
        .fails_with(&["no key", &ssh_fingerprint(&rsa)]);

    // set / disable / enable / show.
    w.run(&[
        "user",
        "set",
        "acme-pay",
        "--permissions",
        "list,upload,download",
        "--allow-ip",
        "203.0.113.0/24",
        "--allow-ip",
        "2001:db8::1",
    ])
    .ok();
    w.run(&["user", "disable", "acme-pay"]).ok();
    let shown = json(&w.run(&["user", "show", "acme-pay", "--json"]).ok().stdout);
    assert_eq!(shown["enabled"], false);
    assert_eq!(
        shown["permissions"],
        serde_json::json!(["list", "upload", "download"])
    );
    assert_eq!(
        shown["allowed_ips"],
        serde_json::json!(["203.0.113.0/24", "2001:db8::1/128"])
    );
    assert_eq!(shown["keys"].as_array().unwrap().len(), 2);
    w.run(&["user", "enable", "acme-pay"]).ok();
    w.run(&["user", "set", "acme-pay", "--clear-allow-ip"]).ok();
    let shown = json(&w.run(&["user", "show", "acme-pay", "--json"]).ok().stdout);
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["allowed_ips"], serde_json::json!([]));
    let human = w.run(&["user", "show", "acme-pay"]).ok().stdout.clone();
    assert!(
        human.contains("acme-pay") && human.contains("allowed ips: any"),
        "{human}"
    );
    assert!(!human.contains("argon2"), "hash printed: {human}");

    // Generated passwords: printed once on stdout, at least 20 characters.
    let out = w.run(&["user", "passwd", "acme-pay", "--generate-password"]);
    let generated = out.ok().stdout.trim().to_string();
    assert!(
        generated.len() >= 20 && !generated.contains(' '),
        "{generated:?}"
    );
    let out = w.run(&["user", "add", "beta", "--generate-password", "--disabled"]);
    assert_eq!(out.ok().stdout.trim().lines().count(), 1);
    assert_ne!(out.stdout.trim(), generated);
    let out = w.run(&["user", "passwd", "beta"]);
    assert_ne!(out.code, Some(0));

    // Error cases, each one line on stderr naming what is wrong.
    w.run_stdin(
        &["user", "add", "acme-pay", "--password-stdin"],
        Some("x\n"),
    )
    .fails_with(&["already exists", "acme-pay"]);
    w.run(&["user", "show", "ghost"])
        .fails_with(&["unknown user", "ghost"]);
    w.run(&["user", "rm", "ghost"])
        .fails_with(&["unknown user", "ghost"]);
    w.run(&["user", "key", "list", "ghost"])
        .fails_with(&["unknown user", "ghost"]);
    w.run(&["user", "disable", "ghost"])
        .fails_with(&["unknown user", "ghost"]);
    w.run(&["user", "set", "acme-pay", "--allow-ip", "10.0.0.0/33"])
        .fails_with(&["10.0.0.0/33"]);
    w.run(&["user", "set", "acme-pay", "--permissions", "list,chmod"])
        .fails_with(&["unknown permission", "chmod"]);
    w.run_stdin(&["user", "add", "gamma", "--password-stdin"], Some(""))
        .fails_with(&["no password"]);

    w.run(&["user", "rm", "beta"]).ok();
    let list = json(&w.run(&["user", "list", "--json"]).ok().stdout);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The password itself is never stored or printed.
    for args in [
        &["user", "list"][..],
        &["user", "show", "acme-pay", "--json"],
    ] {
        let out = w.run(args);
        assert!(!out.stdout.contains(pw) && !out.stderr.contains(pw));
    }
}

#[test]
fn embedded_default_lifecycle_needs_no_config() {
    let w = Wharf::embedded();
    lifecycle(&w);
    assert!(
        w.file("wharf.db").exists(),
        "wharf.db not created in the working directory"
    );
    // Neither the password nor the generated ones are stored in plaintext.
    let db = std::fs::read(w.file("wharf.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("correct horse"));
    let shown = json(&w.run(&["user", "show", "acme-pay", "--json"]).ok().stdout);
    let expected =
        url::Url::from_directory_path(w.path().canonicalize().unwrap().join("data/acme-pay"))
            .unwrap()
            .to_string();
    let home = shown["home"].as_str().unwrap();
    assert!(
        home == expected || home.ends_with("/data/acme-pay/"),
        "home {home}, expected {expected}"
    );
}

#[tokio::test]
async fn postgres_lifecycle_by_env_and_by_config_file() {
    let pg = PgDb::create().await;
    let url = pg.url.clone();
    let by_env = tokio::task::spawn_blocking(move || {
        let w = Wharf::embedded().with_env("WHARF_DATABASE__URL", &url);
        lifecycle(&w);
        assert!(
            !w.file("wharf.db").exists(),
            "SQLite used instead of Postgres"
        );
    });
    by_env.await.unwrap();

    // The same database through a config file, --config before and after the subcommand, and
    // WHARF_CONFIG.
    let url = pg.url.clone();
    tokio::task::spawn_blocking(move || {
        let w = Wharf::embedded();
        let cfg = w.file("wharf.toml");
        std::fs::write(
            &cfg,
            format!(
                "[database]\nurl = \"{url}\"\n[storage]\ndefault_home = \"s3://reports/in/\"\n"
            ),
        )
        .unwrap();
        let cfg = cfg.to_str().unwrap();
        let list = json(
            &w.run(&["--config", cfg, "user", "list", "--json"])
                .ok()
                .stdout,
        );
        assert_eq!(list[0]["username"], "acme-pay");
        w.run(&["user", "add", "delta", "--config", cfg]).ok();
        let shown = json(
            &w.command(&["user", "show", "delta", "--json"])
                .env("WHARF_CONFIG", cfg)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap(),
        );
        assert_eq!(shown["home"], "s3://reports/in/delta/");
        assert_eq!(shown["has_password"], false);
        assert!(!w.file("wharf.db").exists());
    })
    .await
    .unwrap();
}

#[test]
fn bad_input_is_refused_with_one_clear_line() {
    let w = Wharf::embedded();
    for bad in ["Acme", "-acme", "a b", "../x", &"a".repeat(65)] {
        w.run(&["user", "add", bad])
            .fails_with(&["invalid username"]);
    }
    w.run(&["user", "add", "x", "--allow-ip", "not-an-ip"])
        .fails_with(&["not-an-ip"]);
    w.run(&["user", "add", "x", "--permissions", "upload,root"])
        .fails_with(&["unknown permission", "root"]);
    w.run(&["user", "add", "x", "--home", "ftp://nope/"])
        .fails_with(&["invalid home"]);
    w.run(&["user", "add", "x", "--home", "s3://Bad_Bucket/p/"])
        .fails_with(&["bucket name"]);

    // Keys: malformed, DSA, RSA under 2048 bits, options.
    std::fs::write(w.file("junk.pub"), "ssh-ed25519 AAAAnotbase64\n").unwrap();
    w.run(&["user", "add", "x", "--ssh-key", "junk.pub"])
        .fails_with(&["junk.pub", "not an OpenSSH public key"]);
    let weak = ssh_keygen(w.path(), "weak", "rsa", Some(1024));
    w.run(&["user", "add", "x", "--ssh-key", weak.to_str().unwrap()])
        .fails_with(&["1024 bits", "too weak"]);
    let dss = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaFpEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXmUr7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACBAPQnTtBBy0Ww8oZ3Z+kg2sEvQ9clnFgTDTBw54Cd1fm4GJy0Nw5ENEwnRO3e0e1TwjK/3r2iTwDkAe3cyPOSPO3P+ihLTEsYE1QiwEr5XV1yVUYA5gTb2vrXbXCpuNNo8nNPJ5ZPI2sKNjc2/GWxtT0Kkfp3h3DTtcW0+rk/XZtD user@host\n";
    std::fs::write(w.file("dsa.pub"), dss).unwrap();
    w.run(&["user", "add", "x", "--ssh-key", "dsa.pub"])
        .fails_with(&["unsupported key type ssh-dss"]);
    let ed = std::fs::read_to_string(ssh_keygen(w.path(), "ed", "ed25519", None)).unwrap();
    std::fs::write(w.file("opts.pub"), format!("from=\"10.0.0.1\" {ed}")).unwrap();
    w.run(&["user", "add", "x", "--ssh-key", "opts.pub"])
        .fails_with(&["options", "--allow-ip"]);
    w.run(&["user", "add", "x", "--ssh-key", "missing.pub"])
        .fails_with(&["missing.pub"]);
    // Nothing above created the account (or even needed the database).
    let list = json(&w.run(&["user", "list", "--json"]).ok().stdout);
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn unreachable_database_is_named_without_its_password() {
    let w = Wharf::embedded().with_env(
        "WHARF_DATABASE__URL",
        "postgres://wharf:hunter2@127.0.0.1:1/partners",
    );
    let out = w.run(&["user", "list"]);
    out.fails_with(&["127.0.0.1:1", "partners"]);
    assert!(!out.stderr.contains("hunter2"), "{out:?}");
    w.run(&["migrate"]).fails_with(&["127.0.0.1:1"]);
}

#[test]
fn config_errors_name_the_key_and_the_expected_form() {
    let w = Wharf::embedded();
    std::fs::write(
        w.file("a.toml"),
        "[sftp]\nlisten = \"0.0.0.0:2222\"\ntimeout = \"1s\"\n",
    )
    .unwrap();
    w.run(&["--config", "a.toml", "user", "list"])
        .fails_with(&["sftp.timeout"]);
    std::fs::write(w.file("b.toml"), "[sftp]\nidle_timeout = 5\n").unwrap();
    w.run(&["--config", "b.toml", "user", "list"])
        .fails_with(&["sftp.idle_timeout", "\"30s\""]);
    std::fs::write(w.file("c.toml"), "[log]\nformat = \"xml\"\n").unwrap();
    w.run(&["--config", "c.toml", "user", "list"])
        .fails_with(&["log.format", "json"]);
    std::fs::write(w.file("d.toml"), "not = [valid\n").unwrap();
    w.run(&["--config", "d.toml", "user", "list"])
        .fails_with(&["d.toml", "TOML"]);
    w.run(&["--config", "missing.toml", "user", "list"])
        .fails_with(&["missing.toml"]);
    let w = w.with_env("WHARF_STORAGE__S3__PART_SIZE", "lots");
    w.run(&["user", "list"])
        .fails_with(&["storage.s3.part_size", "WHARF_STORAGE__S3__PART_SIZE"]);
}

#[test]
fn migrate_is_idempotent() {
    let w = Wharf::embedded();
    w.run(&["migrate"]).ok();
    w.run(&["migrate"]).ok();
    w.run(&["user", "list"]).ok();
}
