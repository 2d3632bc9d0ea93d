//! The deployment template (`deploy/voicegraph.template.yaml`) held against the code:
//!
//! - the environment the user data gives each instance group names only settings of this
//!   version and is enough to start its processes in production mode;
//! - each instance role allows the AWS operations the code makes and nothing else, and every
//!   security-scanner waiver says why;
//! - the stack deploys into moto's CloudFormation (`tests/deploy/stack.py` stands in for the
//!   resource types moto does not model and says which), and `migrate`, `serve`, `relay` and
//!   `worker` run as separate processes with exactly the environment the user data gives them
//!   (the emulator's endpoint and the database's address aside) and take a call from a
//!   presigned upload to `COMPLETED` seen on a subscription; every AWS operation each process
//!   made is allowed by its group's role.
//!
//! cfn-lint and checkov run on the template in `scripts/test.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::backends;
use crate::helpers::{short_call, Subscription};
use crate::require;

const BIN: &str = env!("CARGO_BIN_EXE_voicegraph");
/// The bootstrap key given to the stack (a `BootstrapAdminKey` of the template's pattern).
const STACK_ADMIN_KEY: &str = "vg_deploytestdeploytestdeploytestdeploytest";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `python3`, when it can load the template (PyYAML comes with moto, installed by
/// scripts/test.sh); outside CI a missing one skips with a note.
fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3");
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI needs python3 with PyYAML (scripts/test.sh installs moto, which brings it)"
    );
    eprintln!("skipped: this test needs python3 with PyYAML");
    None
}

/// The template in long form (`!Ref x` is `{"Ref": "x"}`, and so on).
fn template(python: &str) -> Value {
    let out = Command::new(python)
        .arg("tests/deploy/stack.py")
        .arg("--dump")
        .current_dir(root())
        .output()
        .expect("run tests/deploy/stack.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the template as JSON")
}

/// The lines of the `/etc/voicegraph/voicegraph.env` here-document in a user data script.
fn env_of_user_data(script: &str) -> BTreeMap<String, String> {
    let start = script
        .find("<<'ENV'\n")
        .expect("the user data writes /etc/voicegraph/voicegraph.env")
        + "<<'ENV'\n".len();
    let end = start
        + script[start..]
            .find("\nENV\n")
            .expect("the here-document ends");
    script[start..end]
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// The user data script of a launch template, with its `${…}` references still in.
fn user_data(template: &Value, launch_template: &str) -> String {
    let sub = &template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
        ["UserData"]["Fn::Base64"]["Fn::Sub"];
    sub.as_str()
        .or_else(|| sub[0].as_str())
        .expect("the user data is a Fn::Sub")
        .to_string()
}

/// `${X}` and `${X.y}` references in `text` replaced by plausible values of their kind.
fn with_placeholders(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = at + rest[at..].find('}').expect("closed reference");
        let name = &rest[at + 2..end];
        out.push_str(match name {
            "AWS::Region" => "us-east-1",
            "DatabasePort" | "CachePort" => "5432",
            n if n.ends_with("Host") => "host.internal",
            n if n.ends_with("Queue") => "https://sqs.us-east-1.amazonaws.com/123456789012/q",
            n if n.ends_with("Topic") => "arn:aws:sns:us-east-1:123456789012:t",
            n if n.ends_with("Secret") => "arn:aws:secretsmanager:us-east-1:123456789012:secret:s",
            "Bucket" => "bucket",
            "WorkerConcurrency" => "2",
            "OtlpEndpoint" => "https://otlp.example.com",
            other => panic!("the env refers to {other}: give it a placeholder here"),
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn layers_of(env: &BTreeMap<String, String>) -> voicegraph::config::Layers {
    let mut layers = voicegraph::config::Layers::default();
    layers.merge_env(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    layers
}

#[test]
fn the_user_data_sets_only_settings_and_each_group_gets_what_its_processes_need() {
    let python = require!(python());
    let template = template(python);
    for (group, launch_template) in [
        ("api", "ApiLaunchTemplate"),
        ("worker", "WorkerLaunchTemplate"),
    ] {
        let script = user_data(&template, launch_template);
        let env: BTreeMap<String, String> = env_of_user_data(&script)
            .into_iter()
            .map(|(k, v)| (k, with_placeholders(&v)))
            .collect();
        for key in env.keys() {
            assert!(
                key.starts_with("VOICEGRAPH_") || key == "AWS_REGION",
                "{group}: {key} is neither a setting nor the SDK's region"
            );
        }
        let layers = layers_of(&env);
        assert_eq!(
            layers.unknown().expect("the settings type"),
            Vec::<String>::new(),
            "{group}: the user data sets variables that are no setting"
        );
        let s = layers.settings().expect("the settings type");
        assert!(s.is_production(), "{group}");
        assert!(matches!(
            voicegraph::wiring::database_backend(&s).unwrap(),
            voicegraph::wiring::DatabaseBackend::Postgres(_)
        ));
        assert!(matches!(
            voicegraph::wiring::blob_backend(&s).unwrap(),
            voicegraph::wiring::BlobBackend::S3 { .. }
        ));
        assert!(
            s.job_queue_url.is_some() && s.secret_id.is_some(),
            "{group}"
        );
        assert!(s.database_password_secret_id.is_some(), "{group}");
        assert!(s.database_url().contains("sslmode=require"), "{group}");
        match group {
            // serve, relay and the migrate step.
            "api" => {
                assert!(s.events_topic_arn.is_some() && s.realtime_queue_url.is_some());
                assert!(s.redis_url.as_deref().unwrap().starts_with("rediss://"));
                assert!(s.redis_password_secret_id.is_some());
                assert!(s.migrate_database_url.is_some());
                assert!(s.migrate_database_password_secret_id.is_some());
                assert_eq!(s.database_runtime_role.as_deref(), Some("voicegraph_app"));
                assert_eq!(
                    s.trusted_proxy_hops, 1,
                    "every connection comes from the ALB"
                );
                assert!(s.listen.ends_with(":8080"));
                for unit in ["migrate", "serve", "relay"] {
                    assert!(
                        script.contains(&format!("voicegraph-{unit}.service")),
                        "{unit}"
                    );
                }
            }
            // The worker reads no events and publishes none itself (the relay does), so it
            // needs no Redis and no topic.
            _ => {
                assert!(s.redis_url.is_none() && s.events_topic_arn.is_none());
                assert!(s.migrate_database_url.is_none());
                assert!(script.contains("ExecStart=/usr/local/bin/voicegraph worker"));
            }
        }
        // The target group's port is the one serve listens on.
        if group == "api" {
            assert_eq!(
                template["Resources"]["TargetGroup"]["Properties"]["Port"],
                json!(8080)
            );
            assert_eq!(
                template["Resources"]["TargetGroup"]["Properties"]["HealthCheckPath"],
                "/readyz"
            );
        }
    }
}

#[test]
fn every_scanner_waiver_says_why() {
    let python = require!(python());
    let template = template(python);
    let mut waivers = 0;
    for (name, resource) in template["Resources"].as_object().unwrap() {
        let Some(skips) = resource["Metadata"]["checkov"]["skip"].as_array() else {
            continue;
        };
        for skip in skips {
            let id = skip["id"].as_str().unwrap_or_default();
            let why = skip["comment"].as_str().unwrap_or_default();
            assert!(id.starts_with("CKV"), "{name}: {skip}");
            assert!(why.split_whitespace().count() >= 5, "{name} {id}: say why");
            waivers += 1;
        }
    }
    assert!(waivers > 0);
}

/// The AWS operations the code calls: `…client….op()` and `Client::new(…).op()` chains in `src`.
fn operations_in_code() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("src"), &mut files);
    let mut ops = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.contains("aws_sdk_") && !text.contains("aws::") {
            continue;
        }
        // Only the code, not its unit tests.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut rest = code;
        while let Some(at) = rest.find("client") {
            let mut tail = &rest[at + "client".len()..];
            // `client(sdk)`, `Client::new(sdk)`
            if let Some(args) = tail
                .strip_prefix('(')
                .or_else(|| tail.strip_prefix("::new("))
            {
                tail = &args[args.find(')').map_or(0, |i| i + 1)..];
            }
            let tail = tail.trim_start();
            if let Some(call) = tail.strip_prefix('.') {
                let call = call.trim_start();
                let name: String = call
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if call[name.len()..].starts_with("()") && !name.is_empty() && name != "clone" {
                    ops.insert(name);
                }
            }
            rest = &rest[at + 1..];
        }
    }
    ops
}

/// The IAM actions an SDK operation (snake case, as called) needs.
fn actions_of(operation: &str) -> &'static [&'static str] {
    match operation {
        "send_message" | "send_message_batch" => &["sqs:SendMessage"],
        "receive_message" => &["sqs:ReceiveMessage"],
        "delete_message" | "delete_message_batch" => &["sqs:DeleteMessage"],
        "change_message_visibility" | "change_message_visibility_batch" => {
            &["sqs:ChangeMessageVisibility"]
        }
        "get_queue_attributes" => &["sqs:GetQueueAttributes"],
        "get_queue_url" => &["sqs:GetQueueUrl"],
        "publish" => &["sns:Publish"],
        "get_object" | "head_object" => &["s3:GetObject"],
        "put_object" => &["s3:PutObject"],
        "delete_object" => &["s3:DeleteObject"],
        "copy_object" => &["s3:GetObject", "s3:PutObject"],
        "head_bucket" => &["s3:ListBucket"],
        "get_secret_value" => &["secretsmanager:GetSecretValue"],
        other => panic!("the code calls AWS operation {other}: map it to its IAM actions here and allow them in the template's roles"),
    }
}

/// The same for the operation names the SDK reports (`voicegraph_aws_requests_total`).
fn actions_of_reported(operation: &str) -> &'static [&'static str] {
    let mut snake = String::new();
    for (i, c) in operation.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    actions_of(&snake)
}

/// The statements of a role's inline policies: (Sid, actions).
fn statements(template: &Value, role: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for policy in template["Resources"][role]["Properties"]["Policies"]
        .as_array()
        .unwrap()
    {
        for st in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            assert_eq!(st["Effect"], "Allow", "{role}: {st}");
            let actions = match &st["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_string()).collect(),
                other => panic!("{role}: action {other}"),
            };
            for a in &actions {
                assert!(!a.contains('*'), "{role}: wildcard action {a}");
            }
            assert_ne!(st["Resource"], "*", "{role}: a statement on every resource");
            out.push((st["Sid"].as_str().unwrap_or_default().to_string(), actions));
        }
    }
    out
}

/// The actions an instance itself needs, not the processes: installing the release, shipping
/// its logs (CloudWatch agent), completing its termination hook (the drain watcher).
const INSTANCE_ACTIONS: &[&str] = &[
    "s3:GetObject",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "logs:DescribeLogStreams",
    "autoscaling:CompleteLifecycleAction",
];

/// Presigned URLs are used with the API instances' credentials: uploads (PUT) and downloads
/// (GET) of recordings and results.
const PRESIGNED_ACTIONS: &[&str] = &["s3:PutObject", "s3:GetObject"];

#[test]
fn the_roles_allow_the_operations_the_code_makes_and_nothing_else() {
    let python = require!(python());
    let template = template(python);
    let ops = operations_in_code();
    // The scan must see the adapters' calls (a sample of them).
    for op in [
        "send_message_batch",
        "receive_message",
        "publish",
        "copy_object",
        "get_secret_value",
    ] {
        assert!(ops.contains(op), "the scan missed {op}: {ops:?}");
    }
    let code: BTreeSet<&str> = ops
        .iter()
        .flat_map(|op| actions_of(op).iter().copied())
        .chain(PRESIGNED_ACTIONS.iter().copied())
        .collect();
    let mut granted = BTreeSet::new();
    for role in ["ApiRole", "WorkerRole"] {
        for (sid, actions) in statements(&template, role) {
            for a in actions {
                if sid.starts_with("Instance") {
                    assert!(
                        INSTANCE_ACTIONS.contains(&a.as_str()),
                        "{role} {sid}: {a} is not an instance's own need"
                    );
                } else {
                    assert!(
                        code.contains(a.as_str()),
                        "{role} {sid}: {a} is granted but no code calls it"
                    );
                    granted.insert(a);
                }
            }
        }
    }
    for a in code {
        assert!(
            granted.contains(a),
            "the code needs {a} and no role grants it"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The stack in the emulator, and its processes.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn certificates(dir: &Path) {
    let d = |f: &str| dir.join(f).to_string_lossy().to_string();
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=voicegraph test CA",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.crt"),
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &d("redis.key"),
        "-out",
        &d("redis.csr"),
    ]));
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &d("redis.csr"),
        "-CA",
        &d("ca.crt"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &d("san.ext"),
        "-out",
        &d("redis.crt"),
    ]));
}

/// A Redis speaking TLS only, with an AUTH password, as ElastiCache is deployed.
struct TlsRedis(Child);

impl TlsRedis {
    fn start(dir: &Path, port: u16, password: &str) -> Self {
        let d = |f: &str| dir.join(f).to_string_lossy().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &d("redis.crt"),
                "--tls-key-file",
                &d("redis.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &d("ca.crt"),
                "--tls-auth-clients",
                "no",
            ])
            .args([
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `postgres://user@host:port/db?query` with host, port and database replaced.
fn relocate(url: &str, server: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, rest) = rest.split_once('@').unwrap();
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    format!("{scheme}://{user}@{server}/{db}?{query}")
}

/// `voicegraph_aws_requests_total` of a process: (service, operation) → count.
async fn aws_operations(client: &reqwest::Client, port: u16) -> BTreeMap<(String, String), u64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("voicegraph_aws_requests_total{"))
    {
        let (labels, count) = line.rsplit_once(' ').unwrap();
        let label = |name: &str| {
            let at = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            labels[at..at + labels[at..].find('"').unwrap()].to_string()
        };
        out.insert(
            (label("service"), label("operation")),
            count.parse().unwrap(),
        );
    }
    out
}

async fn gql(client: &reqwest::Client, port: u16, query: &str, variables: Value) -> Value {
    let body: Value = client
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(STACK_ADMIN_KEY)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn stack_end_to_end_in_the_emulator() {
    let python = require!(python());
    let endpoint = require!(backends::aws_endpoint());
    let pg = require!(backends::postgres_url());
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());

    // The stack, from the template, in moto's CloudFormation.
    let redis_port = free_port();
    let stack_name = backends::unique("vg-deploy");
    let out = Command::new(python)
        .arg("tests/deploy/stack.py")
        .args(["--endpoint", &endpoint, "--stack", &stack_name])
        .args(["--redis", &format!("127.0.0.1:{redis_port}")])
        .args(["--admin-key", STACK_ADMIN_KEY])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stack: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "stack {stack_name}: {} resources created by moto; stood in for: {}; left out: {}",
        stack["resources"].as_array().unwrap().len(),
        stack["standins"],
        stack["skipped"]
    );
    let outputs = &stack["outputs"];
    for key in [
        "LoadBalancerDnsName",
        "JobQueueUrl",
        "RealtimeQueueUrl",
        "EventsTopicArn",
        "BucketName",
        "AppSecretId",
        "DatabaseEndpoint",
    ] {
        assert!(
            outputs[key].as_str().is_some_and(|v| !v.is_empty()),
            "output {key}"
        );
    }

    // ElastiCache's stand-in: TLS and the AUTH token from the stack's secret.
    let sdk = backends::sdk().await;
    let token: Value = serde_json::from_str(
        aws_sdk_secretsmanager::Client::new(&sdk)
            .get_secret_value()
            .secret_id(outputs["CacheAuthSecretId"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .secret_string()
            .unwrap(),
    )
    .unwrap();
    let _redis = TlsRedis::start(dir.path(), redis_port, token["password"].as_str().unwrap());

    // RDS's stand-in: a fresh database owned by the master user, which may create roles; the
    // runtime role is created by `voicegraph migrate` with the password from its secret.
    let base = pg.trim_end_matches('/').to_string();
    let db = format!("vg_t_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(format!("{base}/postgres"))
        .await
        .unwrap();
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'voicegraph_owner') THEN
                     CREATE ROLE voicegraph_owner LOGIN CREATEROLE;
                 END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$",
        )
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{db}\" OWNER voicegraph_owner"))
        .await
        .unwrap();
    let su = sea_orm::Database::connect(format!("{base}/{db}"))
        .await
        .unwrap();
    su.execute_unprepared("ALTER SCHEMA public OWNER TO voicegraph_owner")
        .await
        .unwrap();
    let server = base
        .rsplit_once('@')
        .map_or(base.as_str(), |(_, h)| h)
        .trim_start_matches("postgres://");

    // Each process gets its group's environment and nothing else, but for what an instance
    // would have from elsewhere: the emulator's endpoint and credentials (the instance profile's,
    // on EC2), the test CA (Amazon's CAs are in the AMI's trust store), and PATH.
    let env_of = |group: &str| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = stack[group]["env"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap().to_string();
                let v = if k.ends_with("DATABASE_URL") {
                    relocate(&v, server, &db)
                } else {
                    v
                };
                (k.clone(), v)
            })
            .collect();
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "PATH",
        ] {
            if let Ok(v) = std::env::var(k) {
                env.push((k.into(), v));
            }
        }
        env.push((
            "SSL_CERT_FILE".into(),
            dir.path().join("ca.crt").to_string_lossy().into(),
        ));
        env
    };
    let spawn = |role: &str, group: &str, extra: &[(&str, String)]| -> Child {
        let log = std::fs::File::create(dir.path().join(format!("{role}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg(role).env_clear().envs(env_of(group));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        cmd.spawn().expect("spawn voicegraph")
    };
    let log_of = |role: &str| {
        std::fs::read_to_string(dir.path().join(format!("{role}.log"))).unwrap_or_default()
    };

    let mut migrate = spawn("migrate", "api", &[]);
    let status = migrate.wait().unwrap();
    assert!(status.success(), "migrate failed:\n{}", log_of("migrate"));

    // Test-only: each process on its own port, and its metrics readable.
    let (serve_port, serve_metrics, relay_metrics, worker_metrics) =
        (free_port(), free_port(), free_port(), free_port());
    let metrics = |p: u16| ("VOICEGRAPH_METRICS_LISTEN", format!("127.0.0.1:{p}"));
    let mut procs = Processes(Vec::new());
    procs.0.push((
        "serve".into(),
        spawn(
            "serve",
            "api",
            &[
                ("VOICEGRAPH_LISTEN", format!("127.0.0.1:{serve_port}")),
                metrics(serve_metrics),
            ],
        ),
    ));
    procs.0.push((
        "relay".into(),
        spawn("relay", "api", &[metrics(relay_metrics)]),
    ));
    procs.0.push((
        "worker".into(),
        spawn("worker", "worker", &[metrics(worker_metrics)]),
    ));

    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{serve_port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        for (name, c) in &mut procs.0 {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", log_of(name));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "serve never became ready:\n{}", log_of("serve"));

    // A subscriber, then a call from a presigned upload.
    let mut ws =
        Subscription::connect(&format!("127.0.0.1:{serve_port}"), "graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {STACK_ADMIN_KEY}") } }))
        .await;
    assert_eq!(
        ws.recv(Duration::from_secs(10)).await.unwrap()["type"],
        "connection_ack"
    );
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription { callEvents(after: \"0\") { kind callId } }" } }))
        .await;
    let audio = short_call();
    let up = gql(
        &client,
        serve_port,
        "mutation($n: Int!) { createRecordingUpload(input: {contentType: \"audio/wav\", byteSize: $n}) { recordingKey uploadUrl headers { name value } } }",
        json!({ "n": audio.len() }),
    )
    .await["createRecordingUpload"]
        .clone();
    let bucket = outputs["BucketName"].as_str().unwrap();
    assert!(up["uploadUrl"].as_str().unwrap().contains(bucket), "{up}");
    let mut put = client.put(up["uploadUrl"].as_str().unwrap()).body(audio);
    for h in up["headers"].as_array().unwrap() {
        put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
    }
    assert!(put.send().await.unwrap().status().is_success());
    let id = gql(
        &client,
        serve_port,
        "mutation($k: String!) { submitCall(input: {recordingKey: $k, externalId: \"deploy-1\"}) { call { id } } }",
        json!({ "k": up["recordingKey"] }),
    )
    .await["submitCall"]["call"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut kinds = Vec::new();
    loop {
        let Some(msg) = ws.recv(Duration::from_secs(60)).await else {
            panic!(
                "no COMPLETED event (saw {kinds:?})\nserve:\n{}\nrelay:\n{}\nworker:\n{}",
                log_of("serve"),
                log_of("relay"),
                log_of("worker")
            );
        };
        assert_eq!(msg["type"], "next", "{msg}");
        let e = &msg["payload"]["data"]["callEvents"];
        assert_eq!(e["callId"], id.as_str());
        kinds.push(e["kind"].as_str().unwrap().to_string());
        if e["kind"] == "COMPLETED" {
            break;
        }
    }
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("SUBMITTED"),
        "{kinds:?}"
    );

    // Every AWS operation each process made is allowed by its group's role.
    let template = template(python);
    let allowed = |role: &str| -> BTreeSet<String> {
        statements(&template, role)
            .into_iter()
            .filter(|(sid, _)| !sid.starts_with("Instance"))
            .flat_map(|(_, a)| a)
            .collect()
    };
    let (api, worker) = (allowed("ApiRole"), allowed("WorkerRole"));
    for (name, port, role) in [
        ("serve", serve_metrics, &api),
        ("relay", relay_metrics, &api),
        ("worker", worker_metrics, &worker),
    ] {
        let ops = aws_operations(&client, port).await;
        assert!(!ops.is_empty(), "{name} made no AWS call at all?");
        eprintln!("{name}: {ops:?}");
        for (service, op) in ops.keys() {
            for action in actions_of_reported(op) {
                assert!(
                    role.contains(*action),
                    "{name} called {service} {op}, which needs {action}: its role does not allow it"
                );
            }
        }
    }

    // SIGTERM: every process drains and exits cleanly.
    for (name, child) in &mut procs.0 {
        let pid = child.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid]));
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{name} after SIGTERM: {status}\n{}",
            log_of(name)
        );
    }
    drop(su);
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await
        .unwrap();
}

/// `.env.example` documents settings of this version only.
#[test]
fn the_example_environment_names_only_settings() {
    let text = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim_start();
        if let Some((key, value)) = line.split_once('=') {
            if key.starts_with("VOICEGRAPH_")
                && key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                // The example's value, without a trailing comment.
                let value = value.split("  #").next().unwrap().trim();
                env.insert(key.to_string(), value.to_string());
            }
        }
    }
    assert!(env.len() > 50, "{env:?}");
    let layers = layers_of(&env);
    assert_eq!(
        layers.unknown().expect("the example's values type"),
        Vec::<String>::new()
    );
}

/// New instances boot together and each runs `voicegraph migrate` first: they take turns on
/// the migration lock, and every one succeeds.
#[tokio::test]
async fn concurrent_migrations_take_turns() {
    let owner = require!(backends::fresh_postgres_db().await);
    let runtime = backends::runtime_url(&owner);
    let children: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(BIN)
                .arg("migrate")
                .env("VOICEGRAPH_DATABASE_URL", &runtime)
                .env("VOICEGRAPH_MIGRATE_DATABASE_URL", &owner)
                .env("VOICEGRAPH_DATABASE_RUNTIME_ROLE", backends::RUNTIME_ROLE)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
