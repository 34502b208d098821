//! The `AccountStore` contract, one body run against SQLite and against Postgres.

use std::sync::Arc;

use secrecy::SecretString;
use wharf::config::DatabaseConfig;
use wharf::db::Db;
use wharf::identity::keys::parse_authorized_keys;
use wharf::identity::{parse_cidr, Account, AccountStore, Hasher, Permission, StoreError};
use wharf::storage::Home;

use crate::harness::{ssh_keygen, PgDb};

async fn open(url: &str) -> (Db, Arc<dyn AccountStore>) {
    let cfg = DatabaseConfig {
        url: SecretString::from(url.to_string()),
        ..DatabaseConfig::default()
    };
    let db = Db::open(&cfg).await.expect("open database");
    // Migrations are idempotent: a second run is a no-op, not an error.
    db.migrate().await.expect("second migrate");
    let store = db.account_store();
    (db, store)
}

async fn contract(store: Arc<dyn AccountStore>) {
    let dir = tempfile::tempdir().unwrap();
    let ed = std::fs::read_to_string(ssh_keygen(dir.path(), "ed", "ed25519", None)).unwrap();
    let ec = std::fs::read_to_string(ssh_keygen(dir.path(), "ec", "ecdsa", Some(384))).unwrap();
    let ed_key = parse_authorized_keys(&ed).unwrap().remove(0);
    let ec_key = parse_authorized_keys(&ec).unwrap().remove(0);

    let hasher = Hasher::new(64, 1, 1).unwrap();
    let mut acme = Account::new(
        "acme".into(),
        Home::parse_uri("s3://reports/acme/").unwrap(),
    );
    acme.password_hash = Some(hasher.hash(&SecretString::from("pw-acme")).unwrap());
    acme.allowed_cidrs = vec![
        parse_cidr("203.0.113.0/24").unwrap(),
        parse_cidr("2001:db8::/32").unwrap(),
    ];
    store
        .create(&acme, std::slice::from_ref(&ed_key))
        .await
        .unwrap();

    // Round trip: what was written is what is read.
    let got = store.get("acme").await.unwrap().expect("acme exists");
    assert_eq!(got, acme);
    assert!(store.get("nobody").await.unwrap().is_none());
    assert!(
        hasher
            .verify(got.password_hash.as_ref(), &SecretString::from("pw-acme"))
            .await
    );

    // Duplicate user: refused, and the first account is untouched.
    let dup = Account::new("acme".into(), Home::parse_uri("s3://other/x/").unwrap());
    assert!(matches!(
        store.create(&dup, &[]).await,
        Err(StoreError::DuplicateUser(u)) if u == "acme"
    ));
    assert_eq!(store.get("acme").await.unwrap().unwrap().home, acme.home);

    // A create whose keys fail leaves no account behind.
    let bad = Account::new(
        "beta".into(),
        Home::parse_uri("s3://reports/beta/").unwrap(),
    );
    assert!(matches!(
        store.create(&bad, &[ec_key.clone(), ec_key.clone()]).await,
        Err(StoreError::DuplicateKey { .. })
    ));
    assert!(store.get("beta").await.unwrap().is_none());
    store.create(&bad, &[]).await.unwrap();

    let names: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.username)
        .collect();
    assert_eq!(names, ["acme", "beta"]);

    // Keys: several per account, found by fingerprint, duplicates refused, removable.
    store
        .add_keys("acme", std::slice::from_ref(&ec_key))
        .await
        .unwrap();
    let keys = store.list_keys("acme").await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| k.fingerprint.as_str())
            .collect::<Vec<_>>(),
        [ed_key.fingerprint.as_str(), ec_key.fingerprint.as_str()]
    );
    assert!(matches!(
        store.add_keys("acme", std::slice::from_ref(&ed_key)).await,
        Err(StoreError::DuplicateKey { fingerprint, .. }) if fingerprint == ed_key.fingerprint
    ));
    let found = store
        .find_key("acme", &ec_key.fingerprint)
        .await
        .unwrap()
        .expect("key found");
    assert_eq!(found.public_key, ec_key.public_key);
    // A key belongs to its account only.
    assert!(store
        .find_key("beta", &ec_key.fingerprint)
        .await
        .unwrap()
        .is_none());
    store.remove_key("acme", &ec_key.fingerprint).await.unwrap();
    assert!(matches!(
        store.remove_key("acme", &ec_key.fingerprint).await,
        Err(StoreError::UnknownKey { .. })
    ));
    assert!(matches!(
        store.add_keys("ghost", std::slice::from_ref(&ed_key)).await,
        Err(StoreError::UnknownUser(u)) if u == "ghost"
    ));
    assert!(matches!(
        store.list_keys("ghost").await,
        Err(StoreError::UnknownUser(_))
    ));

    // Update writes every mutable field and moves updated_at.
    let mut changed = store.get("beta").await.unwrap().unwrap();
    changed.enabled = false;
    changed.permissions = changed.permissions.with(Permission::Delete);
    changed.allowed_cidrs = vec![parse_cidr("10.0.0.0/8").unwrap()];
    changed.home = Home::parse_uri("file:///srv/beta/").unwrap();
    wharf::identity::folders::add(
        &mut changed.folders,
        wharf::identity::Folder {
            path: wharf::identity::folders::parse_path("/outbound").unwrap(),
            home: Home::parse_uri("s3://outgoing/beta/").unwrap(),
            permissions: "list,download".parse().unwrap(),
            rules: wharf::identity::folders::Rules {
                allow: vec!["*.xml".into()],
                deny: Vec::new(),
                max_size: Some(1 << 20),
                no_reuse_names: true,
                receipt: None,
                decrypt_to: Some("/plain".into()),
                require_signature: true,
                duplicates: wharf::identity::folders::Duplicates::Refuse,
                duplicate_window_s: Some(86400),
                scan: Some(false),
            },
        },
    )
    .unwrap();
    changed.pgp.keys.push(wharf::identity::pgp::PartnerKey {
        fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567".into(),
        user_ids: vec!["Beta Reports <reports@beta.test>".into()],
        armored: "-----BEGIN PGP PUBLIC KEY BLOCK-----\n…".into(),
        added_at: wharf::identity::now(),
    });
    store.update(&changed).await.unwrap();
    let after = store.get("beta").await.unwrap().unwrap();
    assert_eq!(after.folders, changed.folders);
    assert_eq!(after.pgp, changed.pgp);
    assert!(store
        .get("acme")
        .await
        .unwrap()
        .unwrap()
        .pgp
        .keys
        .is_empty());
    assert!(store.get("acme").await.unwrap().unwrap().folders.is_empty());
    assert!(!after.enabled);
    assert!(after.permissions.has(Permission::Delete));
    assert_eq!(after.allowed_cidrs, changed.allowed_cidrs);
    assert_eq!(after.home, changed.home);
    assert!(after.updated_at >= changed.updated_at);
    let ghost = Account::new("ghost".into(), changed.home.clone());
    assert!(matches!(
        store.update(&ghost).await,
        Err(StoreError::UnknownUser(_))
    ));

    let at = wharf::identity::now();
    store.record_login("acme", at).await.unwrap();
    assert_eq!(
        store.get("acme").await.unwrap().unwrap().last_login_at,
        Some(at)
    );

    // Delete takes the keys with it.
    store.delete("acme").await.unwrap();
    assert!(store.get("acme").await.unwrap().is_none());
    assert!(matches!(
        store.delete("acme").await,
        Err(StoreError::UnknownUser(_))
    ));
    store.create(&acme, &[]).await.unwrap();
    assert!(store.list_keys("acme").await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let (db, store) = open(&url).await;
    contract(store).await;
    db.close().await;
}

#[tokio::test]
async fn postgres_store_meets_the_contract() {
    let pg = PgDb::create().await;
    let (db, store) = open(&pg.url).await;
    contract(store).await;
    db.close().await;
}
