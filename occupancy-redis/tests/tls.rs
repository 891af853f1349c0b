//! Redis over TLS (`tls` feature): a redis-server of the test's own speaking TLS only, with a CA
//! and a server certificate made at test time (rcgen; nothing committed that expires). Two nodes
//! built from the application's own `redis::Client` (trusting that CA) hand a room over through
//! it, pub/sub included; a node that does not trust the CA fails with a typed error that says
//! why.
#![cfg(feature = "tls")]

mod common;

use common::{RedisServer, expect, released, test_config, user};
use occupancy_core::{Error, Hub};
use occupancy_redis::{RedisBackend, RedisConfig, redis};

/// A CA and a certificate for 127.0.0.1 signed by it, written to a fresh directory:
/// (directory, cert, key, CA PEM).
fn certificates() -> (std::path::PathBuf, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "occupancy-tls-{}-{}",
        std::process::id(),
        getrandom::u64().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ca_pem = ca_cert.pem();
    let cert = write("server.crt", &leaf_cert.pem());
    let key = write("server.key", &leaf_key.serialize_pem());
    write("ca.crt", &ca_pem);
    (dir, cert, key, ca_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_hand_over_through_tls_with_the_applications_client() {
    let (dir, cert, key, ca) = certificates();
    let server = RedisServer::start_tls(&cert, &key, &dir.join("ca.crt").to_string_lossy());
    assert!(server.url().starts_with("rediss://"));
    let node = || async {
        let client = redis::Client::build_with_tls(
            server.url().as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone().into_bytes()),
            },
        )
        .unwrap();
        let backend = RedisBackend::connect_with_client(client, test_config("unused"))
            .await
            .unwrap();
        Hub::builder().backend(backend).build().unwrap()
    };
    let (a, b) = (node().await, node().await);
    let (alice, _an) = user(&a, "alice").await;
    let (bob, mut bn) = user(&b, "bob").await;
    assert!(alice.join("doc", None).await.unwrap().holding);
    assert_eq!(bob.join("doc", None).await.unwrap().position, 1);
    alice.leave("doc").await.unwrap();
    // Told through the other node's subscription, over TLS.
    let n = expect(&mut bn, "released over TLS", released).await;
    assert_eq!(n.room.as_str(), "doc");
    a.backend().check_invariants().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_node_does_not_trust_is_a_typed_error_that_says_why() {
    let (dir, cert, key, _ca) = certificates();
    let server = RedisServer::start_tls(&cert, &key, &dir.join("ca.crt").to_string_lossy());
    // A rediss:// URL is accepted; the system's roots do not know the test CA.
    let err = RedisBackend::connect(test_config(&server.url()))
        .await
        .unwrap_err();
    match &err {
        Error::Unavailable { reason } => {
            println!("untrusted server: {reason}");
            assert!(
                reason.contains("certificate") || reason.contains("UnknownIssuer"),
                "the reason names the certificate: {reason}"
            );
            assert!(reason.contains("127.0.0.1"), "and the server: {reason}");
            assert!(
                reason.contains("build_with_tls"),
                "and what to do: {reason}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Plain Redis spoken to a TLS port fails too, as unavailable, not as a hang.
    let plain = server.url().replacen("rediss://", "redis://", 1);
    let err = RedisBackend::connect(test_config(&plain))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_malformed_url_is_a_config_error_that_says_what_to_write() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(RedisBackend::connect(RedisConfig::new("rediss//nohost")))
        .unwrap_err();
    match err {
        Error::Config(m) => assert!(m.contains("rediss://host:port"), "{m}"),
        other => panic!("expected Config, got {other:?}"),
    }
}
