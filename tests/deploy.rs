//! Deployment: the Helm chart, the plain manifests rendered from it, least
//! privilege (RBAC plus the admission policy) against the real control plane,
//! and uninstall.
//!
//! The cluster tests run one at a time (each starts its own control plane);
//! the chart tests need only helm and run alongside.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::carbon_api::{CarbonApi, EM_TOKEN};
use support::cluster::{Agent, ControlPlane, temp_dir, wait_for};
use support::deploy::*;
use support::scenario::agent_args;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The chart, without a cluster.
// ---------------------------------------------------------------------------

#[test]
fn chart_lints_and_renders_with_secure_defaults() {
    let lint = helm(None, &["lint", "--strict", chart_dir().to_str().unwrap()]);
    assert!(
        lint.status.success(),
        "helm lint --strict:\n{}",
        output_text(&lint)
    );

    let docs = documents(&template_ok(&[]));
    let ds = find(&docs, "DaemonSet", Some("carbon-kube"));
    let pod = &ds["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];

    // No host namespaces, no automounted token (a projected one instead), non-root.
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_eq!(pod[host], false, "{host}");
    }
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], AGENT_SA);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &agent["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    let token_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kube-api-access")
        .expect("projected token volume");
    assert_eq!(
        token_volume["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["hostPath"].is_null()),
        "no hostPath by default"
    );

    // Identity from the downward API, probes on the metrics port, sized resources.
    let env = |name: &str| {
        agent["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    assert_eq!(
        env("NODE_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env("POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env("POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert!(
        env("ELECTRICITY_MAPS_TOKEN_FILE").is_none(),
        "no key configured, no key file"
    );
    assert_eq!(agent["ports"][0]["containerPort"], 9464);
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        agent["resources"]["requests"],
        json!({"cpu": "10m", "memory": "32Mi"})
    );
    assert_eq!(
        agent["resources"]["limits"],
        json!({"cpu": "100m", "memory": "64Mi"})
    );
    // Runs on every node, tainted ones included (also under its own NoSchedule taint).
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null())
    );

    // RBAC: exactly this, nothing more.
    let cluster_role = find(&docs, "ClusterRole", Some("carbon-kube"));
    assert_eq!(
        cluster_role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
            {"apiGroups": ["carbon-kube.io"], "resources": ["carbonscores"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
            {"apiGroups": ["carbon-kube.io"], "resources": ["carbonscores/status"], "verbs": ["patch", "update"]},
        ])
    );
    let role = find(&docs, "Role", Some("carbon-kube"));
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["carbon-kube-leader"], "verbs": ["get", "list", "watch", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ])
    );
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "no Secret without a key"
    );
    assert!(
        docs.iter().all(|d| d["kind"] != "Namespace"),
        "Helm users bring the namespace"
    );

    // The uninstall hook: its own short-lived identity, running `carbon-kube cleanup`.
    let job = find(&docs, "Job", Some("carbon-kube-cleanup"));
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "post-delete"
    );
    let cleanup = &job["spec"]["template"]["spec"];
    assert_eq!(cleanup["serviceAccountName"], CLEANUP_SA);
    assert_eq!(
        cleanup["containers"][0]["command"],
        json!(["/carbon-kube", "cleanup"])
    );
    assert_eq!(
        cleanup["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        find(&docs, "ClusterRole", Some("carbon-kube-cleanup"))["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        ])
    );
}

/// Measured power's opt-ins: the host's /sys read-only, and RAPL's root-only counters
/// read as uid 0 with every capability still dropped, for the agent alone.
#[test]
fn measured_power_opt_ins_mount_sys_read_only_and_rapl_alone_runs_as_root() {
    let env_of = |agent: &Value, name: &str| {
        agent["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    for (flag, root) in [
        ("power.hostSys.enabled=true", false),
        ("power.rapl.enabled=true", true),
    ] {
        let docs = documents(&template_ok(&["--set", flag]));
        let pod = &find(&docs, "DaemonSet", Some("carbon-kube"))["spec"]["template"]["spec"];
        let agent = &pod["containers"][0];
        assert_eq!(
            env_of(agent, "CARBON_KUBE_SYSFS_ROOT"),
            Some(json!("/host/sys")),
            "{flag}"
        );
        let mount = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "host-sys")
            .unwrap_or_else(|| panic!("{flag}: no host-sys mount"));
        assert_eq!(
            (&mount["mountPath"], &mount["readOnly"]),
            (&json!("/host/sys"), &json!(true))
        );
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "host-sys")
            .unwrap();
        assert_eq!(volume["hostPath"]["path"], "/sys");
        let sc = &agent["securityContext"];
        let user = if root { 0 } else { 65532 };
        assert_eq!(pod["securityContext"]["runAsUser"], user, "{flag}");
        assert_eq!(sc["runAsUser"], user, "{flag}");
        assert_eq!(sc["runAsNonRoot"], !root, "{flag}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{flag}");
        assert!(sc["capabilities"]["add"].is_null(), "{flag}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{flag}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{flag}");
        // The uninstall hook never needs RAPL: it stays non-root.
        let job = &find(&docs, "Job", None)["spec"]["template"]["spec"];
        assert_eq!(job["securityContext"]["runAsUser"], 65532, "{flag}");
        assert_eq!(
            job["containers"][0]["securityContext"]["runAsNonRoot"],
            true
        );
    }
    let defaults = documents(&template_ok(&[]));
    let agent = &find(&defaults, "DaemonSet", Some("carbon-kube"))["spec"]["template"]["spec"]["containers"]
        [0];
    assert_eq!(env_of(agent, "CARBON_KUBE_SYSFS_ROOT"), None);
    assert_eq!(env_of(agent, "CARBON_KUBE_DCGM_URL"), None);
}

#[test]
fn provider_keys_are_mounted_files_from_a_created_or_existing_secret() {
    let created = documents(&template_ok(&[
        "--set",
        "providers.electricityMaps.token=em-secret-value",
    ]));
    let secret = find(&created, "Secret", Some("carbon-kube-provider-keys"));
    assert!(secret["data"]["electricity-maps-token"].is_string());
    let pod = &find(&created, "DaemonSet", None)["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let text = agent.to_string();
    assert!(
        !text.contains("em-secret-value"),
        "the key is not in the pod spec"
    );
    assert!(text.contains("\"ELECTRICITY_MAPS_TOKEN_FILE\""), "{text}");
    assert!(
        find(&created, "DaemonSet", None)["spec"]["template"]["metadata"]["annotations"]["checksum/provider-keys"].is_string(),
        "agents roll when the key changes"
    );

    let existing = documents(&template_ok(&[
        "--set",
        "providers.watttime.existingSecret=my-keys",
        "--set",
        "providers.watttime.existingSecretKey=wt",
        "--set",
        "providers.watttime.username=me",
    ]));
    assert!(
        existing.iter().all(|d| d["kind"] != "Secret"),
        "an existing Secret is used, not created"
    );
    let pod = &find(&existing, "DaemonSet", None)["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "watttime-password")
        .expect("volume");
    assert_eq!(volume["secret"]["secretName"], "my-keys");
    assert_eq!(volume["secret"]["items"][0]["key"], "wt");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "WATTTIME_PASSWORD_FILE"
        && e["value"] == "/var/run/secrets/carbon-kube/watttime/password"));
}

#[test]
fn every_setting_the_chart_passes_is_one_the_agent_knows() {
    // All optional features on, so every environment variable the chart can set appears.
    let docs = documents(&template_ok(&[
        "--set",
        "defaultZone=DE",
        "--set",
        "providers.electricityMaps.token=t",
        "--set",
        "providers.electricityMaps.url=http://em.example/v3",
        "--set",
        "providers.watttime.username=u",
        "--set",
        "providers.watttime.password=p",
        "--set",
        "providers.watttime.url=http://wt.example",
        "--set",
        "providers.watttime.regions={US-CAL-CISO=CAISO_NORTH}",
        "--set",
        "providers.ukCarbonIntensity.url=http://uk.example",
        "--set",
        "providers.ukCarbonIntensity.regions={GB-SCOTLAND=1}",
        "--set",
        "providers.noaa.url=http://noaa.example",
        "--set",
        "power.minWattsPerVcpu=0.7",
        "--set",
        "power.maxWattsPerVcpu=3.5",
        "--set",
        "power.memoryWattsPerGb=0.4",
        "--set",
        "power.pue=1.2",
        "--set",
        "power.rapl.enabled=true",
        "--set",
        "power.dcgmExporterUrl=http://nvidia-dcgm-exporter.gpu-operator.svc:9400/metrics",
        "--set",
        "podAttribution.enabled=true",
        "--set",
        "deferral.enabled=true",
        "--set",
        "sharedScores.existingSecret=shared-scores",
    ]));
    let help = carbon_kube(&["agent", "--help"], &[]);
    // Wrapped help lines joined, so an `[env: NAME=]` split over two lines still matches.
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let agent = &find(&docs, "DaemonSet", None)["spec"]["template"]["spec"]["containers"][0];
    let names: Vec<&str> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.len() > 25, "{names:?}");
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "the chart sets {name}, which `carbon-kube agent` does not read"
        );
    }

    // And the agent accepts the chart's default values as they are rendered (the deferral
    // planner's too).
    let defaults = documents(&template_ok(&["--set", "deferral.enabled=true"]));
    let env =
        find(&defaults, "DaemonSet", None)["spec"]["template"]["spec"]["containers"][0]["env"]
            .clone();
    let mut pairs: Vec<(String, String)> = env
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    pairs.push(("NODE_NAME".into(), "n1".into()));
    // `--kubeconfig` at a missing file: configuration is validated before any connection.
    let missing = temp_dir("ck-deploy").join("no-kubeconfig");
    let env: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = carbon_kube(&["agent", "--kubeconfig", missing.to_str().unwrap()], &env);
    let text = output_text(&out);
    assert!(
        !text.contains("invalid configuration") && !text.contains("error: invalid value"),
        "{text}"
    );
    assert!(
        text.contains("reading kubeconfig"),
        "got past configuration to the kubeconfig: {text}"
    );
}

#[test]
fn a_bad_setting_stops_the_binary_before_any_connection_naming_the_flag() {
    let dir = temp_dir("ck-deploy-bad");
    let missing = dir.join("no-kubeconfig");
    let file = dir.join("agent.yaml");
    std::fs::write(&file, "pue: 0.9\n").unwrap();
    let cases: [(&[&str], &str); 6] = [
        // clap's value parsers: the flag, the value and the grammar's reason.
        (
            &["--log=info,carbon_kube=loud"],
            "invalid value 'info,carbon_kube=loud' for '--log <LOG>'",
        ),
        (
            &["--dwell=soon"],
            "'--dwell <DWELL>': \"soon\" is not a duration",
        ),
        (
            &["--taint-effect=NoExecute"],
            "invalid value 'NoExecute' for '--taint-effect",
        ),
        // Checks across flags, and the power overrides, by the agent.
        (
            &["--hysteresis=50"],
            "invalid configuration: --hysteresis: 50 must be below --min-spread",
        ),
        (
            &["--pue=0.9"],
            "invalid configuration: --pue: 0.9 must be between 1 and 3",
        ),
        // The same from the config file, below flags and environment.
        (
            &["--config", file.to_str().unwrap()],
            "invalid configuration: --pue: 0.9",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["agent", "--kubeconfig", missing.to_str().unwrap()];
        all.extend(args);
        let out = carbon_kube(&all, &[("NODE_NAME", "n1")]);
        let text = output_text(&out);
        assert!(!out.status.success(), "{args:?} started:\n{text}");
        assert!(
            text.contains(needle),
            "{args:?}: {needle:?} not in:\n{text}"
        );
        assert!(
            !text.contains("reading kubeconfig"),
            "{args:?}: got past configuration:\n{text}"
        );
    }
}

#[test]
fn monitoring_objects_render_when_enabled() {
    let docs = documents(&template_ok(&[
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.labels.release=kube-prometheus-stack",
    ]));
    assert_eq!(
        find(&docs, "PodMonitor", None)["spec"]["podMetricsEndpoints"][0]["port"],
        "metrics"
    );
    assert_eq!(
        find(&docs, "ServiceMonitor", None)["spec"]["endpoints"][0]["port"],
        "metrics"
    );
    assert_eq!(find(&docs, "Service", None)["spec"]["clusterIP"], "None");
    let rule = find(&docs, "PrometheusRule", None);
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert!(
        rule["spec"]["groups"].is_array(),
        "files/alerts.yaml supplies spec.groups: {rule}"
    );
    let off = documents(&template_ok(&[]));
    for kind in ["PodMonitor", "ServiceMonitor", "PrometheusRule", "Service"] {
        assert!(
            off.iter().all(|d| d["kind"] != kind),
            "{kind} is off by default"
        );
    }
}

#[test]
fn values_schema_rejects_bad_values_at_template_time() {
    let bad: &[(&[&str], &str)] = &[
        (&["--set", "taintEffect=NoExecute"], "/taintEffect"),
        (&["--set", "threshold=0"], "/threshold"),
        (&["--set", "threshold=-5"], "/threshold"),
        (&["--set", "maxTaintedFraction=1.5"], "/maxTaintedFraction"),
        (
            &["--set-json", "maxTaintedFraction=-0.1"],
            "/maxTaintedFraction",
        ),
        (&["--set", "dwell=ten-minutes"], "/dwell"),
        (&["--set", "pollInterval=0s"], "/pollInterval"),
        (&["--set", "leaseDuration=soon"], "/leaseDuration"),
        (
            &["--set", "providers.order={electricity-maps,bing}"],
            "/providers/order",
        ),
        (&["--set", "image.digest=latest"], "/image/digest"),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (&["--set", "power.pue=0.5"], "/power/pue"),
        (
            &["--set", "power.dcgmExporterUrl=ftp://dcgm:9400"],
            "/power/dcgmExporterUrl",
        ),
        (&["--set", "deferral.headroom=1"], "/deferral/headroom"),
        (&["--set", "deferral.margin=soon"], "/deferral/margin"),
        (&["--set-json", "deferral.kSigma=-1"], "/deferral/kSigma"),
        (
            &["--set", "deferral.forecastError=2"],
            "/deferral/forecastError",
        ),
        (&["--set", "treshold=250"], "treshold"),
        // Checks across fields, made by the templates.
        (
            &["--set", "policy=absolute", "--set", "hysteresis=300"],
            "hysteresis (300) must be below threshold (300)",
        ),
        (
            &["--set", "hysteresis=50"],
            "hysteresis (50) must be below minSpread (50) under policy relative",
        ),
        (
            &["--set", "policy=absolute", "--set", "taintFloor=100"],
            "taintFloor applies to policy relative only",
        ),
        (&["--set", "policy=cheapest"], "/policy"),
        (&["--set", "minSpread=-5"], "/minSpread"),
        (&["--set", "minSpreadPercent=lots"], "/minSpreadPercent"),
        (
            &[
                "--set",
                "providers.electricityMaps.token=x",
                "--set",
                "providers.electricityMaps.existingSecret=y",
            ],
            "not both",
        ),
        (
            &["--set", "providers.watttime.password=x"],
            "needs providers.watttime.username",
        ),
    ];
    for (args, expected) in bad {
        let out = template(args);
        let text = output_text(&out);
        assert!(
            !out.status.success(),
            "helm template {args:?} should fail but rendered"
        );
        assert!(
            text.contains(expected),
            "helm template {args:?}: expected {expected:?} in:\n{text}"
        );
    }
    // `--set` passes decimals as strings: they are accepted where numbers are.
    for good in [
        "maxTaintedFraction=0.3",
        "threshold=250.5",
        "hysteresis=12.5",
        "minSpread=40.5",
        "taintFloor=120",
        "dwell=0",
        "power.pue=1.1",
    ] {
        let out = template(&["--set", good]);
        assert!(out.status.success(), "--set {good}:\n{}", output_text(&out));
    }
}

#[test]
fn chart_crd_is_the_binarys_crd() {
    let out = carbon_kube(&["crd"], &[]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = chart_dir().join("files/carbonscores.carbon-kube.io.yaml");
    let checked_in = std::fs::read_to_string(&file).unwrap();
    assert!(
        printed == checked_in,
        "{} differs from `carbon-kube crd`, which embeds it: rebuild, or regenerate it from the types with `CARBON_KUBE_UPDATE_CRD=1 cargo test --lib crd` and run `bash deploy/render.sh`",
        file.display()
    );
    // And the chart installs it unchanged apart from labels and the keep annotation
    // (Helm re-serialises it: `minimum: 0.0` comes out as `0`, the same JSON number).
    let docs = documents(&template_ok(&[]));
    let rendered = find(
        &docs,
        "CustomResourceDefinition",
        Some("carbonscores.carbon-kube.io"),
    );
    let binary = &documents(&printed)[0];
    assert_eq!(
        numbers_as_f64(&rendered["spec"]),
        numbers_as_f64(&binary["spec"])
    );
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
}

#[test]
fn manifests_match_a_fresh_render() {
    require_helm();
    let out_dir = temp_dir("ck-render");
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("deploy/render.sh"))
        .arg(&out_dir)
        .env("PATH", path_with_tools())
        .output()
        .expect("deploy/render.sh");
    assert!(
        out.status.success(),
        "deploy/render.sh:\n{}",
        output_text(&out)
    );
    for file in [
        "manifests/carbon-kube.yaml",
        "cleanup/carbon-kube-cleanup.yaml",
    ] {
        let fresh = std::fs::read_to_string(out_dir.join(file)).unwrap();
        let checked_in =
            std::fs::read_to_string(repo_root().join("deploy").join(file)).unwrap_or_default();
        assert!(
            fresh == checked_in,
            "deploy/{file} is not what the chart renders: run `bash deploy/render.sh` and commit"
        );
    }
    let docs =
        documents(&std::fs::read_to_string(out_dir.join("manifests/carbon-kube.yaml")).unwrap());
    let ns = find(&docs, "Namespace", Some(NAMESPACE));
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert!(
        docs.iter().all(|d| d["kind"] != "Job"),
        "the uninstall hook is not applied at install time"
    );
    let _ = std::fs::remove_dir_all(out_dir);
}

#[test]
fn the_chart_runs_as_the_images_user_and_the_image_builds_with_the_tested_script() {
    // The image itself is checked against the Dockerfile's final stage by
    // tests/real_nodes.rs (base, binary, user, ports, entrypoint, nothing
    // else); what it cannot see is the builder stage (no Docker engine here)
    // and the chart. The builder must run the script the tests build their
    // binary with, for the image's platform, into the COPY's source.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let joined = dockerfile.replace("\\\n", " ");
    let stages: Vec<Vec<&str>> = joined
        .split("\nFROM ")
        .skip(1)
        .map(|stage| stage.lines().map(str::trim).collect())
        .collect();
    assert_eq!(stages.len(), 2, "a builder and the image: {stages:?}");
    let run = stages[0]
        .iter()
        .find(|l| l.starts_with("RUN "))
        .expect("the builder runs the build");
    assert!(
        run.contains(r#"bash deploy/build-static.sh --arch "$TARGETARCH" --out /out"#),
        "the builder builds with deploy/build-static.sh for TARGETARCH: {run}"
    );
    assert!(stages[0].contains(&"ARG TARGETARCH"), "{:?}", stages[0]);

    let user = stages[1]
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image declares its user");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let docs = documents(&template_ok(&[]));
    let pod = &find(&docs, "DaemonSet", None)["spec"]["template"]["spec"];
    let context = &pod["securityContext"];
    assert_eq!(context["runAsUser"].to_string(), uid, "{context}");
    assert_eq!(context["runAsGroup"].to_string(), gid, "{context}");
    for container in pod["containers"].as_array().expect("containers") {
        let own = &container["securityContext"];
        for (key, id) in [("runAsUser", uid), ("runAsGroup", gid)] {
            if !own[key].is_null() {
                assert_eq!(own[key].to_string(), id, "{}: {own}", container["name"]);
            }
        }
    }

    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for excluded in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l == excluded),
            ".dockerignore lacks {excluded}"
        );
    }
}

/// The same JSON with every number as an f64, so that 0 and 0.0 compare equal.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// PATH with target/tools/bin first, for scripts that call helm.
fn path_with_tools() -> String {
    let tools = support::cluster::tool("helm");
    let dir = tools.parent().map(Path::to_path_buf).unwrap_or_default();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------
// Against the real control plane.
// ---------------------------------------------------------------------------

/// Installs the chart as Helm would in a real cluster. The control plane comes with
/// the CRD applied by kubectl; Helm must own it, so it goes first.
fn helm_install(cp: &ControlPlane, extra: &[&str]) -> Duration {
    cp.kubectl_ok(&[
        "delete",
        "crd",
        "carbonscores.carbon-kube.io",
        "--wait=true",
    ]);
    let chart = chart_dir();
    let mut args = vec![
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    helm_ok(Some(cp), &args);
    let took = started.elapsed();
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/carbonscores.carbon-kube.io",
        "--timeout=30s",
    ]);
    took
}

/// Policies are enforced a moment after they are created: wait until a write the
/// node policy must deny is denied by it, and likewise for the Lease policy.
fn wait_for_policies(agent: &Path, other_node: &str) -> Duration {
    let started = Instant::now();
    wait_for(
        "the node-writes policy to be enforced",
        Duration::from_secs(60),
        || {
            let out = kubectl_as(
                agent,
                &[
                    "label",
                    "node",
                    other_node,
                    &format!("{CLASS_LABEL}=red"),
                    "--overwrite",
                    "--dry-run=server",
                ],
            );
            Verdict::of_kubectl(&out)
                .is_policy(NODE_POLICY)
                .then_some(())
        },
    );
    wait_for(
        "the lease-create policy to be enforced",
        Duration::from_secs(60),
        || {
            let out = kubectl_stdin(
                agent,
                &["-n", NAMESPACE, "create", "--dry-run=server", "-f", "-"],
                &lease("probe"),
            );
            Verdict::of_kubectl(&out)
                .is_policy(LEASE_POLICY)
                .then_some(())
        },
    );
    started.elapsed()
}

fn lease(name: &str) -> String {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": {}}).to_string()
}

/// An agent process that authenticates as the chart's service account with a token
/// bound to its node, reading its API key from a file as in the pod.
fn spawn_agent_as(cp: &ControlPlane, api: &CarbonApi, node: &str, kubeconfig: &Path) -> Agent {
    let key_file = cp.dir.join("electricity-maps-token");
    std::fs::write(&key_file, EM_TOKEN).unwrap();
    Agent::spawn(
        cp,
        node,
        &agent_args(api, &[]),
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("ELECTRICITY_MAPS_TOKEN_FILE", key_file.to_str().unwrap()),
        ],
    )
}

fn marks(cp: &ControlPlane, node: &str) -> Vec<String> {
    carbon_marks(&cp.node(node))
}

fn wait_marks(cp: &ControlPlane, node: &str, want: &[&str]) {
    wait_for(
        &format!("{node} to carry {want:?}"),
        Duration::from_secs(45),
        || {
            let found = marks(cp, node);
            want.iter()
                .all(|w| found.iter().any(|f| f.starts_with(w)))
                .then_some(())
        },
    );
}

fn untouched_node_state(node: &Value) -> Value {
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    taints.retain(|t| t["key"] != TAINT_KEY);
    let mut labels = node["metadata"]["labels"].clone();
    if let Some(map) = labels.as_object_mut() {
        map.remove(CLASS_LABEL);
    }
    let mut conditions: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != CONDITION);
    json!({"taints": taints, "labels": labels, "conditions": conditions, "annotations": node["metadata"]["annotations"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_manifests_apply_server_side() {
    let _serial = SERIAL.lock().await;
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        let manifests = repo_root().join("deploy/manifests");
        let out = cp.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            manifests.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "kubectl apply --server-side --dry-run=server -f deploy/manifests/:\n{}",
            output_text(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for object in [
            "namespace/carbon-kube",
            "customresourcedefinition.apiextensions.k8s.io/carbonscores.carbon-kube.io",
            "clusterrole.rbac.authorization.k8s.io/carbon-kube",
            "daemonset.apps/carbon-kube",
            "validatingadmissionpolicy.admissionregistration.k8s.io/carbon-kube-node-writes",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/carbon-kube-lease-create",
        ] {
            assert!(text.contains(object), "{object} missing from:\n{text}");
        }
        // The cleanup Job for manifest users is valid too.
        let cleanup = repo_root().join("deploy/cleanup");
        let out = cp.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            cleanup.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "deploy/cleanup:\n{}",
            output_text(&out)
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_creates_the_agent_under_restricted_pod_security() {
    let _serial = SERIAL.lock().await;
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        for node in ["h1", "h2"] {
            cp.create_node(node, &[("carbon-kube.io/grid-zone", "DE")]);
        }
        // The agent's pod must meet the "restricted" Pod Security Standard.
        cp.kubectl_ok(&[
            "label",
            "namespace",
            NAMESPACE,
            "pod-security.kubernetes.io/enforce=restricted",
        ]);
        let took = helm_install(&cp, &[]);
        println!("helm install: {took:?}");

        let status = helm_ok(Some(&cp), &["status", RELEASE, "-n", NAMESPACE]);
        assert!(status.contains("STATUS: deployed"), "{status}");
        for object in [
            "serviceaccount/carbon-kube",
            "role/carbon-kube",
            "rolebinding/carbon-kube",
            "clusterrole/carbon-kube",
            "clusterrolebinding/carbon-kube",
            "daemonset/carbon-kube",
            "validatingadmissionpolicy/carbon-kube-node-writes",
            "validatingadmissionpolicybinding/carbon-kube-node-writes",
            "validatingadmissionpolicy/carbon-kube-lease-create",
            "validatingadmissionpolicybinding/carbon-kube-lease-create",
        ] {
            cp.kubectl_ok(&["-n", NAMESPACE, "get", object]);
        }
        // No kubelet runs pods here, but the DaemonSet controller creates one per node,
        // through admission (Pod Security "restricted" included).
        let pods = wait_for("one agent pod per node", Duration::from_secs(60), || {
            let pods = cp.kubectl_json(&[
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=carbon-kube",
            ]);
            let mut nodes: Vec<String> = pods["items"]
                .as_array()?
                .iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
                .collect();
            nodes.sort();
            (nodes == ["h1", "h2"]).then_some(pods)
        });
        let events = cp.kubectl_ok(&["-n", NAMESPACE, "get", "events"]);
        assert!(!events.contains("violates PodSecurity"), "{events}");
        assert_eq!(
            pods["items"][0]["spec"]["containers"][0]["securityContext"]["runAsUser"],
            65532
        );

        // The policies compile and type-check against Node without warnings.
        for policy in [NODE_POLICY, LEASE_POLICY] {
            let checked = wait_for(
                &format!("{policy} type-checked"),
                Duration::from_secs(30),
                || {
                    let p = cp.kubectl_json(&["get", "validatingadmissionpolicy", policy]);
                    (p["status"]["observedGeneration"] == p["metadata"]["generation"]
                        && !p["status"]["typeChecking"].is_null())
                    .then_some(p)
                },
            );
            assert!(
                checked["status"]["typeChecking"]["expressionWarnings"].is_null(),
                "{policy}: {}",
                checked["status"]["typeChecking"]
            );
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_node_bound_token_does_its_job_and_nothing_else() {
    let _serial = SERIAL.lock().await;
    let api = CarbonApi::start().await;
    let cp = tokio::task::block_in_place(ControlPlane::start);
    let (agent_kc, mut agent) = tokio::task::block_in_place(|| {
        cp.create_node(
            "n1",
            &[("carbon-kube.io/grid-zone", "DE"), ("team", "batch")],
        );
        cp.create_node("n2", &[("carbon-kube.io/grid-zone", "DE")]);
        cp.kubectl_ok(&["taint", "node", "n1", "dedicated=gpu:NoSchedule"]);
        helm_install(&cp, &[]);
        let agent_kc = service_account_kubeconfig(&cp, NAMESPACE, AGENT_SA, Some(("Node", "n1")));
        let took = wait_for_policies(&agent_kc, "n2");
        println!("admission policies enforced {took:?} after helm install returned");

        // The whole job, under RBAC and the policy: lead, poll, write the CarbonScore,
        // taint, label and condition its own node, and clean up when the grid is clean.
        let n1_before = untouched_node_state(&cp.node("n1"));
        api.set_intensity("DE", 520.0);
        let agent = spawn_agent_as(&cp, &api, "n1", &agent_kc);
        let started = Instant::now();
        wait_marks(
            &cp,
            "n1",
            &[
                "taint",
                "label carbon-kube.io/intensity-class=red",
                "condition CarbonIntensityHigh=True",
            ],
        );
        println!(
            "agent with the chart's service account tainted its node in {:?}",
            started.elapsed()
        );
        let score = cp.kubectl_json(&["get", "carbonscore", "de"]);
        assert_eq!(score["status"]["source"], "electricity-maps");
        let lease = cp.kubectl_json(&["-n", NAMESPACE, "get", "lease", "carbon-kube-leader"]);
        assert_eq!(lease["spec"]["holderIdentity"], "carbon-kube-n1");
        assert_eq!(
            agent.metric("carbon_kube_node_write_errors_total"),
            Some(0.0),
            "{}",
            agent.output()
        );
        assert_eq!(
            untouched_node_state(&cp.node("n1")),
            n1_before,
            "only carbon-kube keys changed on n1"
        );
        assert!(
            marks(&cp, "n2").is_empty(),
            "n2 has no agent and was not touched: {:?}",
            marks(&cp, "n2")
        );
        if let Some((rss, peak)) = agent_pid(&agent_kc).and_then(rss_kib) {
            println!("agent (test build, unoptimised) VmRSS {rss} KiB, VmHWM {peak} KiB");
        }
        (agent_kc, agent)
    });

    // What the same token may not do.
    tokio::task::block_in_place(|| {
        let denied_by_policy = |args: &[&str], why: &str| {
            let mut all = args.to_vec();
            all.push("--dry-run=server");
            let verdict = Verdict::of_kubectl(&kubectl_as(&agent_kc, &all));
            assert!(
                verdict.is_policy(NODE_POLICY),
                "{why}: kubectl {args:?} gave {verdict:?}"
            );
        };
        let class = format!("{CLASS_LABEL}=red");
        let our_taint = format!("{TAINT_KEY}=true:PreferNoSchedule");
        denied_by_policy(
            &["label", "node", "n2", &class, "--overwrite"],
            "another node's label",
        );
        denied_by_policy(&["taint", "node", "n2", &our_taint], "another node's taint");
        denied_by_policy(
            &["label", "node", "n1", "team=evil", "--overwrite"],
            "a foreign label on its node",
        );
        denied_by_policy(&["label", "node", "n1", "extra=1"], "a new foreign label");
        denied_by_policy(
            &[
                "label",
                "node",
                "n1",
                &format!("{CLASS_LABEL}=purple"),
                "--overwrite",
            ],
            "a class that is not green/amber/red",
        );
        denied_by_policy(
            &["taint", "node", "n1", "evil=1:NoSchedule"],
            "a foreign taint",
        );
        denied_by_policy(
            &["taint", "node", "n1", "dedicated-"],
            "removing a foreign taint",
        );
        denied_by_policy(
            &[
                "taint",
                "node",
                "n1",
                &format!("{TAINT_KEY}=true:NoExecute"),
            ],
            "our taint with NoExecute",
        );
        denied_by_policy(&["annotate", "node", "n1", "x=y"], "an annotation");
        denied_by_policy(&["cordon", "n1"], "spec.unschedulable (cordon)");
        denied_by_policy(
            &[
                "patch",
                "node",
                "n1",
                "--type=merge",
                "-p",
                r#"{"spec":{"providerID":"evil://1"}}"#,
            ],
            "spec.providerID",
        );

        let allowed = |args: &[&str]| {
            let mut all = args.to_vec();
            all.push("--dry-run=server");
            let out = kubectl_as(&agent_kc, &all);
            assert_eq!(
                Verdict::of_kubectl(&out),
                Verdict::Allowed,
                "kubectl {args:?}"
            );
        };
        allowed(&[
            "label",
            "node",
            "n1",
            &format!("{CLASS_LABEL}=amber"),
            "--overwrite",
        ]);

        // RBAC: nothing beyond the rules.
        let forbidden = |args: &[&str]| {
            let verdict = Verdict::of_kubectl(&kubectl_as(&agent_kc, args));
            assert!(
                verdict.is_rbac_forbidden(),
                "kubectl {args:?} gave {verdict:?}"
            );
        };
        forbidden(&["delete", "node", "n2", "--dry-run=server"]);
        forbidden(&["-n", NAMESPACE, "get", "secrets"]);
        forbidden(&["get", "pods", "-A"]);
        forbidden(&["-n", "default", "get", "leases"]);
        cp.apply(
            &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "someone-else", "namespace": NAMESPACE}, "spec": {}})
            .to_string(),
        );
        forbidden(&["-n", NAMESPACE, "get", "lease", "someone-else"]);
        let out = kubectl_stdin(
            &agent_kc,
            &["-n", NAMESPACE, "create", "--dry-run=server", "-f", "-"],
            &lease("not-the-leader"),
        );
        assert!(
            Verdict::of_kubectl(&out).is_policy(LEASE_POLICY),
            "{}",
            output_text(&out)
        );

        // A token of the same service account that is bound to no node may write no Node.
        let unbound = service_account_kubeconfig(&cp, NAMESPACE, AGENT_SA, None);
        let out = kubectl_as(
            &unbound,
            &[
                "label",
                "node",
                "n1",
                &format!("{CLASS_LABEL}=amber"),
                "--overwrite",
                "--dry-run=server",
            ],
        );
        let verdict = Verdict::of_kubectl(&out);
        assert!(
            verdict.is_policy(NODE_POLICY) && output_text(&out).contains("not bound to a node"),
            "{verdict:?}"
        );

        // The pod-bound token a real agent pod gets (the DaemonSet's pod on n2) carries its node too.
        let pod = wait_for("the DaemonSet's pod on n2", Duration::from_secs(60), || {
            let pods = cp.kubectl_json(&[
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "--field-selector=spec.nodeName=n2",
            ]);
            pods["items"][0]["metadata"]["name"]
                .as_str()
                .map(str::to_string)
        });
        let pod_kc = service_account_kubeconfig(&cp, NAMESPACE, AGENT_SA, Some(("Pod", &pod)));
        let own = kubectl_as(
            &pod_kc,
            &[
                "label",
                "node",
                "n2",
                &format!("{CLASS_LABEL}=green"),
                "--dry-run=server",
            ],
        );
        assert_eq!(
            Verdict::of_kubectl(&own),
            Verdict::Allowed,
            "{}",
            output_text(&own)
        );
        let other = kubectl_as(
            &pod_kc,
            &[
                "label",
                "node",
                "n1",
                &format!("{CLASS_LABEL}=green"),
                "--overwrite",
                "--dry-run=server",
            ],
        );
        assert!(
            Verdict::of_kubectl(&other).is_policy(NODE_POLICY),
            "{}",
            output_text(&other)
        );

        // Another service account is denied the CarbonScores.
        cp.kubectl_ok(&["-n", "default", "create", "serviceaccount", "intruder"]);
        let intruder = service_account_kubeconfig(&cp, "default", "intruder", None);
        for args in [
            &["get", "carbonscores"][..],
            &[
                "patch",
                "carbonscore",
                "de",
                "--type=merge",
                "-p",
                r#"{"spec":{"zone":"FR"}}"#,
            ],
            &["delete", "carbonscore", "de"],
        ] {
            let verdict = Verdict::of_kubectl(&kubectl_as(&intruder, args));
            assert!(
                verdict.is_rbac_forbidden(),
                "intruder {args:?}: {verdict:?}"
            );
        }
    });

    // nodes/status writes, sent as the agent sends them (a patch without a read).
    let client = client_for(&agent_kc).await;
    let own = patch_node_status(&client, "n1", &condition_patch(CONDITION, "True"), true).await;
    assert_eq!(own, Verdict::Allowed);
    let ready = patch_node_status(&client, "n1", &condition_patch("Ready", "False"), true).await;
    assert!(
        ready.is_policy(NODE_POLICY),
        "the Ready condition: {ready:?}"
    );
    let capacity = json!({"status": {"capacity": {"pods": "1"}}});
    let verdict = patch_node_status(&client, "n1", &capacity, true).await;
    assert!(
        verdict.is_policy(NODE_POLICY),
        "status.capacity: {verdict:?}"
    );
    let label_via_status = json!({"metadata": {"labels": {"team": "evil"}}});
    let verdict = patch_node_status(&client, "n1", &label_via_status, true).await;
    assert!(
        verdict.is_policy(NODE_POLICY),
        "a label through nodes/status: {verdict:?}"
    );
    let verdict = patch_node_status(&client, "n2", &condition_patch(CONDITION, "True"), true).await;
    assert!(
        verdict.is_policy(NODE_POLICY),
        "another node's condition: {verdict:?}"
    );

    // The clean grid: the agent removes the taint under the policy too.
    api.set_intensity("DE", 120.0);
    tokio::task::block_in_place(|| {
        wait_for("n1 untainted, green", Duration::from_secs(45), || {
            let m = marks(&cp, "n1");
            (!m.iter().any(|m| m.starts_with("taint")) && m.iter().any(|m| m.ends_with("=green")))
                .then_some(())
        });
        assert_eq!(
            agent.metric("carbon_kube_node_write_errors_total"),
            Some(0.0),
            "{}",
            agent.output()
        );
        agent.terminate();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_leaves_no_carbon_marks_on_any_node() {
    let _serial = SERIAL.lock().await;
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 600.0);
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        cp.create_node(
            "u1",
            &[("carbon-kube.io/grid-zone", "DE"), ("team", "batch")],
        );
        cp.create_node("u2", &[("carbon-kube.io/grid-zone", "DE")]);
        cp.create_node("u3", &[("carbon-kube.io/grid-zone", "FR")]);
        cp.kubectl_ok(&["taint", "node", "u1", "dedicated=gpu:NoSchedule"]);
        helm_install(&cp, &[]);
        let kubeconfigs: Vec<PathBuf> = ["u1", "u2"]
            .iter()
            .map(|n| service_account_kubeconfig(&cp, NAMESPACE, AGENT_SA, Some(("Node", n))))
            .collect();
        wait_for_policies(&kubeconfigs[0], "u2");
        let mut agents: Vec<Agent> = ["u1", "u2"]
            .iter()
            .zip(&kubeconfigs)
            .map(|(node, kc)| spawn_agent_as(&cp, &api, node, kc))
            .collect();
        for node in ["u1", "u2"] {
            wait_marks(&cp, node, &["taint", "label", "condition"]);
        }
        // u3's agent died long ago and left its marks behind.
        cp.kubectl_ok(&["label", "node", "u3", &format!("{CLASS_LABEL}=amber")]);
        cp.kubectl_ok(&[
            "taint",
            "node",
            "u3",
            &format!("{TAINT_KEY}=true:NoSchedule"),
        ]);
        let before: Vec<Value> = ["u1", "u2", "u3"]
            .iter()
            .map(|n| untouched_node_state(&cp.node(n)))
            .collect();

        // `helm uninstall` deletes the agents and their permissions, then runs the
        // post-delete hook. No kubelet runs the hook's Job here: the test creates the
        // hook's objects as rendered and runs the Job's command with the hook's identity.
        let started = Instant::now();
        helm_ok(
            Some(&cp),
            &["uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks"],
        );
        for agent in &mut agents {
            agent.terminate();
        }
        for gone in [
            "clusterrole/carbon-kube",
            "clusterrolebinding/carbon-kube",
            "validatingadmissionpolicy/carbon-kube-node-writes",
        ] {
            let out = cp.kubectl(&["get", gone]);
            assert!(!out.status.success(), "{gone} survived helm uninstall");
        }
        let crd = cp.kubectl(&["get", "crd", "carbonscores.carbon-kube.io"]);
        assert!(
            crd.status.success(),
            "the CRD is kept (helm.sh/resource-policy: keep)"
        );

        let hook = template_ok(&["--show-only", "templates/cleanup.yaml"]);
        cp.apply(&hook);
        let docs = documents(&hook);
        let container = &find(&docs, "Job", Some("carbon-kube-cleanup"))["spec"]["template"]["spec"]
            ["containers"][0];
        let command: Vec<String> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .chain(container["args"].as_array().unwrap())
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(&command[..2], ["/carbon-kube", "cleanup"]);
        // The Job's pod, bound by the scheduler like any other, is admitted (restricted PSS);
        // its token is what the hook runs with.
        let pod = wait_for("the cleanup Job's pod", Duration::from_secs(60), || {
            let pods = cp.kubectl_json(&[
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=cleanup",
            ]);
            pods["items"][0]["metadata"]["name"]
                .as_str()
                .map(str::to_string)
        });
        let hook_kc = service_account_kubeconfig(&cp, NAMESPACE, CLEANUP_SA, Some(("Pod", &pod)));

        let help = carbon_kube(&["cleanup", "--help"], &[]);
        assert!(
            help.status.success(),
            "`carbon-kube cleanup` does not exist yet; the chart's post-delete hook runs it \
             (contract: deploy/helm/carbon-kube/templates/cleanup.yaml and the issue 4 note):\n{}",
            output_text(&help)
        );
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        let run = carbon_kube(&args, &[("KUBECONFIG", hook_kc.to_str().unwrap())]);
        assert!(
            run.status.success(),
            "carbon-kube {args:?}:\n{}",
            output_text(&run)
        );
        println!("uninstall + cleanup: {:?}", started.elapsed());

        for (node, before) in ["u1", "u2", "u3"].iter().zip(&before) {
            let state = cp.node(node);
            assert!(
                carbon_marks(&state).is_empty(),
                "{node} still carries {:?}",
                carbon_marks(&state)
            );
            assert_eq!(
                &untouched_node_state(&state),
                before,
                "cleanup changed something else on {node}"
            );
        }
        // Idempotent: a second run (a retried Job) finds nothing to do and succeeds.
        let again = carbon_kube(&args, &[("KUBECONFIG", hook_kc.to_str().unwrap())]);
        assert!(again.status.success(), "{}", output_text(&again));

        // The hook's identity cannot do more than clean: no deleting nodes, no secrets.
        for args in [
            &["delete", "node", "u3", "--dry-run=server"][..],
            &["-n", NAMESPACE, "get", "secrets"],
        ] {
            let verdict = Verdict::of_kubectl(&kubectl_as(&hook_kc, args));
            assert!(verdict.is_rbac_forbidden(), "cleanup {args:?}: {verdict:?}");
        }
    });
}
