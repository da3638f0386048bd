//! A Kafka broker of a test's own (one KRaft node from the jars `tests/infra/up.sh` fetched), so a test can kill and
//! restart a broker without disturbing the shared one.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::{closed_port, infra_var};

/// SASL users of [`KafkaNode::start_secured`] (PLAIN) and [`KafkaNode::start_sasl_ssl`] (SCRAM-SHA-512);
/// test-only passwords.
pub const SECURED_USERS: &[(&str, &str)] = &[("relay", "relay-secret")];

/// How the client listener authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Security {
    None,
    SaslPlain,
    SaslSslScram,
}

pub struct KafkaNode {
    pub dir: tempfile::TempDir,
    /// The broker's own listener (inter-broker traffic, and clients that should bypass any proxy).
    pub port: u16,
    /// With [`KafkaNode::start_behind`]: the client listener's port and the port it advertises (a proxy's).
    pub client: Option<(u16, u16)>,
    controller_port: u16,
    child: Option<Child>,
    java: String,
    libs: String,
}

impl KafkaNode {
    /// Formats storage and starts the broker; waits until it serves.
    pub fn start() -> KafkaNode {
        KafkaNode::start_with(None, Security::None)
    }

    /// Like [`KafkaNode::start`], with a second listener for clients that advertises `proxy_port`: clients that
    /// bootstrap through a proxy on that port keep talking through it (metadata points them back to it), while the
    /// broker's own traffic and [`KafkaNode::bootstrap`] stay direct. Returns the node; the client listener's own
    /// port is `client.0`, which the proxy forwards to.
    pub fn start_behind(proxy_port: u16) -> KafkaNode {
        KafkaNode::start_with(Some(proxy_port), Security::None)
    }

    /// A broker with authorization: the client listener (`client_listener()`) takes SASL/PLAIN logins
    /// ([`SECURED_USERS`]) and the StandardAuthorizer denies what no ACL allows; the direct listener
    /// (`bootstrap()`) stays unauthenticated and all-powerful, for the test and for [`KafkaNode::acl`].
    pub fn start_secured() -> KafkaNode {
        KafkaNode::start_with(None, Security::SaslPlain)
    }

    /// A broker as production has it: the client listener speaks SASL_SSL with SCRAM-SHA-512 logins
    /// ([`SECURED_USERS`]) behind TLS with a certificate for 127.0.0.1 and localhost ([`KafkaNode::ca_file`]
    /// verifies it), and the StandardAuthorizer denies what no ACL allows. The direct listener stays as in
    /// [`KafkaNode::start_secured`].
    pub fn start_sasl_ssl() -> KafkaNode {
        KafkaNode::start_with(None, Security::SaslSslScram)
    }

    /// The CA certificate (PEM) clients verify the SASL_SSL listener with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls-cert.pem")
    }

    fn start_with(proxy_port: Option<u16>, security: Security) -> KafkaNode {
        let secured = security != Security::None;
        let scram = security == Security::SaslSslScram;
        let libs = infra_var("KAFKA_LIBS_DIR").expect("KAFKA_LIBS_DIR (run `bash tests/infra/up.sh`)");
        let java = infra_var("KAFKA_JAVA").unwrap_or_else(|| "java".into());
        let dir = tempfile::Builder::new().prefix("outbox-relay-kafka-").tempdir().unwrap();
        let port = closed_port();
        let controller_port = closed_port();
        let client = match proxy_port {
            Some(p) => Some((closed_port(), p)),
            None if secured => {
                let own = closed_port();
                Some((own, own))
            }
            None => None,
        };
        let security = if scram {
            // A self-signed certificate that names the listener's address: clients verify it (the relay's default
            // endpoint identification) against the certificate itself as CA.
            let (key, cert) = (dir.path().join("tls-key.pem"), dir.path().join("tls-cert.pem"));
            let made = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .unwrap();
            assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
            let keystore = dir.path().join("tls-keystore.pem");
            let pem = std::fs::read_to_string(&key).unwrap() + &std::fs::read_to_string(&cert).unwrap();
            std::fs::write(&keystore, pem).unwrap();
            format!(
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CLIENT:SASL_SSL\n\
                 sasl.enabled.mechanisms=SCRAM-SHA-512\nlistener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.client.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.client.ssl.keystore.type=PEM\nlistener.name.client.ssl.keystore.location={}\n\
                 authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
                 super.users=User:ANONYMOUS\n",
                keystore.display()
            )
        } else if secured {
            let users: String = SECURED_USERS.iter().map(|(u, p)| format!(" user_{u}=\"{p}\"")).collect();
            format!(
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CLIENT:SASL_PLAINTEXT\n\
                 sasl.enabled.mechanisms=PLAIN\nlistener.name.client.sasl.enabled.mechanisms=PLAIN\n\
                 listener.name.client.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
                 required{users};\n\
                 authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
                 super.users=User:ANONYMOUS\n"
            )
        } else {
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CLIENT:PLAINTEXT\n".to_owned()
        };
        let (extra_listener, extra_advertised) = match client {
            Some((own, advertised)) => {
                (format!(",CLIENT://127.0.0.1:{own}"), format!(",CLIENT://127.0.0.1:{advertised}"))
            }
            None => (String::new(), String::new()),
        };
        let props = format!(
            "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.bootstrap.servers=127.0.0.1:{controller_port}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}{extra_listener}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}{extra_advertised}\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             {security}log.dirs={}\nnum.partitions=1\n\
             offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n\
             offsets.topic.num.partitions=1\ntransaction.state.log.num.partitions=1\ngroup.initial.rebalance.delay.ms=0\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("server.properties"), props).unwrap();
        let mut format = Command::new(&java);
        format
            .args(["-Xmx256m", "-cp", &format!("{libs}/*"), "kafka.tools.StorageTool", "format", "--standalone", "-t"])
            .arg("Zm9yIHRlc3RzIG9ubHkx")
            .arg("-c")
            .arg(dir.path().join("server.properties"));
        if scram {
            // SCRAM credentials live in the cluster metadata: written at format time.
            for (user, password) in SECURED_USERS {
                format.args(["--add-scram", &format!("SCRAM-SHA-512=[name={user},password={password}]")]);
            }
        }
        let status = format.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(status.success(), "kafka storage format failed");
        let mut node = KafkaNode { dir, port, client, controller_port, child: None, java, libs };
        node.restart();
        node
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Grants `User:relay` everything (topics, groups, transactional ids, the cluster), then applies `deny`
    /// (e.g. `["--operation", "Write", "--topic", "t"]`) as a deny ACL for it.
    pub fn allow_relay_all_but(&self, deny: &[&str]) {
        for resource in [["--topic", "*"].as_slice(), &["--group", "*"], &["--transactional-id", "*"], &["--cluster"]] {
            let mut args = vec!["--add", "--allow-principal", "User:relay", "--operation", "All"];
            args.extend_from_slice(resource);
            self.acl(&args);
        }
        let mut args = vec!["--add", "--deny-principal", "User:relay"];
        args.extend_from_slice(deny);
        self.acl(&args);
    }

    /// Runs Kafka's `AclCommand` against the direct listener, e.g. `["--add", "--allow-principal", "User:relay", ...]`.
    pub fn acl(&self, args: &[&str]) {
        crate::services::kafka_tool("org.apache.kafka.tools.AclCommand", &self.bootstrap(), args);
    }

    /// The client listener's own address (what a proxy in front of it forwards to).
    pub fn client_listener(&self) -> String {
        format!("127.0.0.1:{}", self.client.expect("started with start_behind").0)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// Starts (again) on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.log()).unwrap();
        let child = Command::new(&self.java)
            .args(["-Xms128m", "-Xmx384m", "-XX:+UseG1GC", "-cp", &format!("{}/*", self.libs), "kafka.Kafka"])
            .arg(self.dir.path().join("server.properties"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "test broker did not start:\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: the broker vanishes mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill();
    }
}
