//! The release path: the GitHub workflows pass actionlint (with shellcheck on
//! their scripts), the release workflow publishes what the chart and README
//! name, a tag must match the versions it publishes, and the arm64 static
//! binary, cross-built by the release script, runs under qemu-user and prints
//! the same CRD as the amd64 one.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::cluster::{require_tool, temp_dir, tool};
use support::deploy::{build_static, carbon_kube, chart_dir, output_text, repo_root};
use yaml_serde::Value;

fn workflows() -> Vec<PathBuf> {
    let dir = repo_root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

/// actionlint on `files`, run from `dir` (it reads `.github/actionlint.yaml` there).
fn actionlint(dir: &Path, files: &[PathBuf]) -> Output {
    require_tool(
        "actionlint",
        "`bash tests/tools/install.sh` builds it into target/tools/bin (go install github.com/rhysd/actionlint/cmd/actionlint)",
    );
    // Without shellcheck actionlint silently skips the `run:` scripts.
    require_tool(
        "shellcheck",
        "apt-get install shellcheck (actionlint checks the workflows' scripts with it)",
    );
    Command::new(tool("actionlint"))
        .arg("-no-color")
        .args(files)
        .current_dir(dir)
        .output()
        .expect("running actionlint")
}

fn release_workflow() -> Value {
    let path = repo_root().join(".github/workflows/release.yml");
    yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every step of every job: (job name, step).
fn steps(workflow: &Value) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for (name, job) in workflow["jobs"].as_mapping().expect("jobs") {
        for step in job["steps"].as_sequence().expect("steps") {
            all.push((name.as_str().unwrap().to_owned(), step.clone()));
        }
    }
    all
}

fn run_text(step: &Value) -> &str {
    step["run"].as_str().unwrap_or("")
}

#[test]
fn workflows_pass_actionlint() {
    let files = workflows();
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap()).collect();
    assert!(
        names.iter().any(|n| *n == "release.yml") && names.iter().any(|n| *n == "ci.yml"),
        "{names:?}"
    );
    let out = actionlint(&repo_root(), &files);
    assert!(out.status.success(), "actionlint:\n{}", output_text(&out));

    // The linter is really checking: a wrong expression and an unquoted variable in a
    // script (shellcheck SC2086) are both reported.
    let dir = temp_dir("ck-actionlint");
    let broken = dir.join(".github/workflows/release.yml");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(repo_root().join(".github/workflows/release.yml")).unwrap();
    let text = text
        .replacen("${{ matrix.arch }}", "${{ matrix.architecture }}", 1)
        .replacen(
            r#"bash deploy/cross-deps.sh "$ARCH""#,
            "bash deploy/cross-deps.sh $ARCH",
            1,
        );
    std::fs::write(&broken, text).unwrap();
    let out = actionlint(&dir, std::slice::from_ref(&broken));
    let report = output_text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("architecture"), "{report}");
    assert!(
        report.contains("SC2086"),
        "shellcheck did not run:\n{report}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_action_is_pinned_to_a_commit() {
    for file in workflows() {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| {
            l.trim_start().starts_with("- uses:") || l.trim_start().starts_with("uses:")
        }) {
            let spec = line.split("uses:").nth(1).unwrap().trim();
            let (action, rest) = spec.split_once('@').unwrap_or((spec, ""));
            let (sha, comment) = rest.split_once(" # ").unwrap_or((rest, ""));
            assert!(
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{}: {action} is not pinned to a commit: {line}",
                file.display()
            );
            assert!(
                comment.starts_with('v'),
                "{}: {action}@{sha} lacks its version comment: {line}",
                file.display()
            );
        }
    }
}

#[test]
fn workflows_build_with_the_dockerfiles_rust() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let pinned = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("Dockerfile pins ARG RUST_VERSION");
    for file in workflows() {
        let wf: Value = yaml_serde::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            wf["env"]["RUST_VERSION"].as_str(),
            Some(pinned),
            "{}: env RUST_VERSION",
            file.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(r#"rustup toolchain install "$RUST_VERSION""#)
                || text.contains("RUST_VERSION=${{ env.RUST_VERSION }}"),
            "{} does not use RUST_VERSION",
            file.display()
        );
    }
}

#[test]
fn release_workflow_publishes_the_chart_image_binaries_and_signs_them() {
    let wf = release_workflow();
    assert_eq!(
        wf["on"]["push"]["tags"][0], "v[0-9]+.[0-9]+.[0-9]+",
        "runs on version tags"
    );
    assert_eq!(
        wf["permissions"],
        Value::Mapping(Default::default()),
        "no permission unless a job asks"
    );
    let jobs = &wf["jobs"];

    // The image is the one the chart installs by default.
    let values: Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(wf["env"]["IMAGE"], values["image"]["repository"]);

    // Binaries for both architectures, by the release script.
    let arches = &jobs["binaries"]["strategy"]["matrix"]["arch"];
    assert_eq!(
        arches,
        &yaml_serde::from_str::<Value>("[amd64, arm64]").unwrap()
    );
    let all = steps(&wf);
    let runs_in = |job: &str, needle: &str| {
        all.iter()
            .any(|(j, s)| j == job && run_text(s).contains(needle))
    };
    assert!(runs_in(
        "binaries",
        r#"bash deploy/build-static.sh --arch "$ARCH""#
    ));

    // One multi-arch image from the Dockerfile, with SBOM and provenance.
    let build = all
        .iter()
        .find(|(j, s)| j == "image" && s["id"] == "build")
        .map(|(_, s)| s)
        .expect("image build step");
    assert!(
        build["uses"]
            .as_str()
            .unwrap()
            .starts_with("docker/build-push-action@")
    );
    assert_eq!(build["with"]["platforms"], "linux/amd64,linux/arm64");
    assert_eq!(build["with"]["push"], true);
    assert_eq!(build["with"]["sbom"], true);
    assert_eq!(build["with"]["provenance"], "mode=max");

    // The chart to the OCI registry the README installs from, after the image.
    assert!(runs_in(
        "chart",
        r#"helm push "dist/carbon-kube-$VERSION.tgz" "oci://$CHART_REPO""#
    ));
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let chart_ref = format!(
        "oci://{}/carbon-kube",
        wf["env"]["CHART_REPO"].as_str().unwrap()
    );
    assert!(readme.contains(&chart_ref), "README lacks {chart_ref}");
    assert!(
        jobs["chart"]["needs"]
            .as_sequence()
            .unwrap()
            .contains(&"image".into())
    );

    // Keyless signing: the jobs that sign may mint an OIDC token, and sign by digest.
    for (job, needle) in [
        ("image", r#"cosign sign --yes "$IMAGE@$DIGEST""#),
        (
            "chart",
            r#"cosign sign --yes "$CHART_REPO/carbon-kube@$DIGEST""#,
        ),
        ("github-release", "cosign sign-blob --yes --bundle"),
    ] {
        assert!(runs_in(job, needle), "{job} does not run {needle}");
        assert_eq!(jobs[job]["permissions"]["id-token"], "write", "{job}");
    }
    // Only the job that creates the release may write the repository.
    for (name, job) in jobs.as_mapping().unwrap() {
        let write = job["permissions"]["contents"] == "write";
        assert_eq!(
            write,
            name == "github-release",
            "{name:?} contents permission"
        );
    }
}

fn release_version(tag: &str) -> Output {
    Command::new("bash")
        .arg(repo_root().join("deploy/release-version.sh"))
        .arg(tag)
        .output()
        .expect("running deploy/release-version.sh")
}

#[test]
fn a_release_tag_must_match_the_crate_and_chart_versions() {
    let version = env!("CARGO_PKG_VERSION");
    let out = release_version(&format!("v{version}"));
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("version={version}\n")
    );

    let out = release_version("v999.0.0");
    assert!(!out.status.success());
    let why = output_text(&out);
    for named in [
        "Cargo.toml version",
        "Chart.yaml version",
        "Chart.yaml appVersion",
    ] {
        assert!(why.contains(named), "{why}");
    }
    for bad in [version, "vlatest", ""] {
        let out = release_version(bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(output_text(&out).contains("is not vX.Y.Z"));
    }
}

/// Variables cargo sets for a test process (prefixes).
/// The arm64 release binary, cross-built by deploy/build-static.sh (a no-op when
/// up to date; tests/run.sh builds it before the tests so it does not compete
/// with them for the CPUs).
fn arm64_binary() -> PathBuf {
    require_tool(
        "aarch64-linux-gnu-gcc",
        "bash deploy/cross-deps.sh arm64 (Debian gcc-aarch64-linux-gnu, rustup target add aarch64-unknown-linux-gnu)",
    );
    build_static(&["--arch", "arm64"])
}

fn under_qemu(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(tool("qemu-aarch64-static"))
        .arg(bin)
        .args(args)
        .env_clear()
        .output()
        .expect("running qemu-aarch64-static");
    assert!(
        out.status.success(),
        "qemu-aarch64-static carbon-kube {args:?}:\n{}",
        output_text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn arm64_static_binary_runs_under_qemu_and_prints_the_same_crd() {
    require_tool(
        "qemu-aarch64-static",
        "apt-get install qemu-user-static (runs the arm64 binary on this host)",
    );
    require_tool(
        "file",
        "apt-get install file (tells the binary's architecture)",
    );
    let bin = arm64_binary();
    let kind = Command::new("file").arg("-L").arg(&bin).output();
    let kind = String::from_utf8(kind.expect("file(1)").stdout).unwrap();
    assert!(kind.contains("ARM aarch64"), "{kind}");
    // Not position-independent (-C relocation-model=static): no relocations to apply at start.
    assert!(kind.contains("statically linked"), "{kind}");

    let native = carbon_kube(&["--version"], &[]);
    assert_eq!(
        under_qemu(&bin, &["--version"]),
        String::from_utf8(native.stdout).unwrap()
    );
    let crd = under_qemu(&bin, &["crd"]);
    let checked_in =
        std::fs::read_to_string(chart_dir().join("files/carbonscores.carbon-kube.io.yaml"))
            .unwrap();
    assert!(
        crd == checked_in,
        "the arm64 binary's CRD differs from the chart's"
    );
    assert_eq!(
        crd,
        String::from_utf8(carbon_kube(&["crd"], &[]).stdout).unwrap()
    );
}
