//! Scraping over https end to end: a real API server and controller-manager, the operator
//! binary with `--scrape-ca-file`, and agent-sim processes serving https with certificates made
//! for this test, while the test plays the kubelet.

mod common;

use std::{path::Path, sync::Arc};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokenbudget::api::Scheme;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `cert.pem` and `key.pem` for `ip` into `dir`, signed by `issuer` (or by itself).
fn certificate(dir: &Path, name: &str, ip: &str, issuer: Option<&Issuer<'_, KeyPair>>) -> Vec<String> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![ip.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let (cert_file, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    vec![
        "--tls-cert".into(),
        cert_file.display().to_string(),
        "--tls-key".into(),
        key_file.display().to_string(),
    ]
}

/// `POST /spend` to an agent that serves https, trusting `ca`.
async fn spend(agent: &Agent, ca: &Path, input: u64) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((agent.ip.as_str(), agent.port))
        .await
        .unwrap();
    let name = ServerName::try_from(agent.ip.clone()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(format!("POST /spend?model=gpt-4o-mini&input={input} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
}

#[tokio::test]
async fn https_pods_are_verified_against_the_scrape_ca() {
    let t = Tenant::new("https").await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&t.ns.name);
    std::fs::create_dir_all(&dir).unwrap();

    // A CA the operator trusts, a pod certificate it signed, and a self-signed one.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "scrape CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_params.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    // The operator, with the CA.
    let operator = Operator::start_with_args(&t.ns.name, &["--scrape-ca-file", &ca_file.display().to_string()]);
    operator.wait_ready().await;

    create(&t.budgets, budget("b")).await;
    create(
        &t.bindings,
        binding("bb", "b").deployment("agent").scheme(Scheme::Https),
    )
    .await;
    create(&t.deployments, deployment("agent").replicas(2)).await;
    let names = pods_of(&t.pods, "agent", 2).await;
    let (good_ip, bad_ip) = (agent_ip(), agent_ip());
    let good = Agent::start(&good_ip, &strs(&certificate(&dir, "good", &good_ip, Some(&issuer))));
    let bad = Agent::start(&bad_ip, &strs(&certificate(&dir, "bad", &bad_ip, None)));
    run_pod(&t.pods, &names[0], &good.ip, 0).await;
    run_pod(&t.pods, &names[1], &bad.ip, 0).await;

    spend(&good, &ca_file, 1234).await;
    wait_for(&t.budgets, "b", "1234 tokens scraped over https", |tb| {
        tb.status.as_ref().and_then(|s| s.used.as_ref()).map(|u| u.tokens) == Some(1234)
    })
    .await;

    // The self-signed pod is not counted, and says why, in a cycle that scraped the good pod.
    let expected = format!(
        "{}: TLS failed: invalid peer certificate: UnknownIssuer (not signed by the CA the operator trusts: --scrape-ca-file {})",
        names[1],
        ca_file.display()
    );
    wait_for(
        &t.bindings,
        "bb",
        &format!("2 pods, 1 scraped, ScrapeHealthy=False saying {expected:?}"),
        |bb| {
            bb.status.as_ref().is_some_and(|s| {
                (s.pods, s.scraped_pods) == (Some(2), Some(1))
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "ScrapeHealthy" && c.status == "False" && c.message == expected)
            })
        },
    )
    .await;
    // The pod may have been reported before, as having no IP yet: a new reason is a new Event.
    let event = wait_event(
        &t.events,
        "a ScrapeFailed Event naming the pod and UnknownIssuer",
        |e| {
            e.reason.as_deref() == Some("ScrapeFailed")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains(&names[1]) && n.contains("UnknownIssuer"))
        },
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let metrics = operator.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("tokenbudget_scrapes_total{result=\"tls\"}"),
        "{metrics}"
    );
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
