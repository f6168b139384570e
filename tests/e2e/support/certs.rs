//! Certificates for TLS tests: a throwaway CA and a server certificate for 127.0.0.1
//! signed by it, made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `ca.pem`, `server.crt` and `server.key` (valid for IP 127.0.0.1, two days)
/// into `dir`; returns the CA's path.
pub fn test_certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is required for the TLS tests");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key_pair = |subject: &str, key: &str, out: &str, extra: &[&str]| {
        let mut args = vec!["req", "-newkey", "rsa:2048", "-nodes", "-subj", subject];
        args.extend_from_slice(&["-keyout", key, "-out", out]);
        args.extend_from_slice(extra);
        openssl(&args);
    };
    key_pair(
        "/CN=flow-archiver test CA",
        "ca.key",
        "ca.pem",
        &["-x509", "-days", "2"],
    );
    key_pair("/CN=127.0.0.1", "server.key", "server.csr", &[]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    dir.join("ca.pem")
}
