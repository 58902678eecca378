//! carbon-kube: one agent per node.
//!
//! ```text
//! carbon APIs ──(leader: poller, once per zone per interval)──▶ CarbonScore per zone
//! every agent: own Node + CarbonScores ──▶ decide ──▶ patch own Node on a transition
//!              host CPU/memory ──▶ power model ──▶ gCO2/h ──▶ /metrics
//!              pod cgroups' CPU time ──▶ dynamic power shared out ──▶ per-pod W, gCO2/h ──▶ /metrics
//! leader:      gated pods + CarbonScore forecasts ──▶ cheapest start ──▶ remove the defer gate
//! --migration: own node tainted long enough + a greener zone ──▶ evict opted-in pods (PDBs hold)
//! ```

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use carbon_kube::attribution;
use carbon_kube::carbon::GridZone;
use carbon_kube::cli::{CleanupArgs, Cli, Command, IntensityArgs, LogFormat};
use carbon_kube::config::{self, AgentConfig};
use carbon_kube::crd::{self, CarbonScore};
use carbon_kube::deferral::controller::Deferral;
use carbon_kube::election::Elector;
use carbon_kube::emissions::{self, EmissionsLoop, PowerSettings};
use carbon_kube::host::HostSampler;
use carbon_kube::kubeclient;
use carbon_kube::kueue::controller::CheckMetrics;
use carbon_kube::meters::MeterSettings;
use carbon_kube::metrics::{self, Metrics};
use carbon_kube::migration::controller::Migrator;
use carbon_kube::poller::Poller;
use carbon_kube::power::PowerCoefficients;
use carbon_kube::providers::cluster::SharedScores;
use carbon_kube::providers::{Provider, build_chain};
use carbon_kube::reconcile::Reconciler;
use carbon_kube::report;
use carbon_kube::supervise::Supervisor;
use carbon_kube::zones::REGION_LABEL;

const LEASE_NAME: &str = "carbon-kube-leader";
/// Well inside the pod's 30 s termination grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    // One TLS provider for kube and reqwest alike; two would make rustls panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = config::parse_cli().unwrap_or_else(|e| e.exit());
    init_logging(&cli);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Crd => {
            print!("{}", crd::CRD_YAML);
            Ok(())
        }
        Command::KueueCrd => {
            print!("{}", carbon_kube::kueue::CRD_YAML);
            Ok(())
        }
        Command::Intensity(args) => runtime.block_on(intensity(args)),
        Command::Cleanup(args) => runtime.block_on(cleanup(args)),
        Command::Power(args) => {
            let power = PowerSettings::from_args(&args.power)?;
            let meters = MeterSettings::from_args(&args.meters)?;
            let sample = emissions::print_sample(&power, &meters, Duration::from_secs(1));
            print!("{}", runtime.block_on(sample)?);
            Ok(())
        }
        Command::Report(args) => {
            let request = report::Request {
                prometheus: args.prometheus,
                range: report::Range::new(args.from, args.to)?,
                by: args.by,
                csv: args.csv,
            };
            print!("{}", runtime.block_on(report::run(&request))?);
            Ok(())
        }
        Command::Agent(args) => {
            let config = AgentConfig::from_args(&args)?;
            runtime.block_on(agent(config))
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = cli.log.clone();
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().finish().with(filter).init(),
        LogFormat::Text => builder.finish().with(filter).init(),
    }
}

/// `carbon-kube intensity --zone Z`: one fetch through the chain, each attempt shown.
async fn intensity(args: Box<IntensityArgs>) -> Result<()> {
    let zone = GridZone::parse(&args.zone).map_err(|e| anyhow::anyhow!("--zone: {e}"))?;
    let chain = build_chain(&config::providers_config(&args.providers)?, None);
    let fetch = chain.fetch(&zone).await;
    for attempt in &fetch.attempts {
        eprintln!(
            "{:<22} {:<16} {:.3}s",
            attempt.provider, attempt.outcome, attempt.seconds
        );
    }
    let reading = fetch.result.map_err(|e| anyhow::anyhow!("{zone}: {e}"))?;
    println!(
        "{} {:.1} gCO2/kWh (source {}, observed {}, {:?}, {} forecast points{})",
        reading.zone,
        reading.grams_per_kwh,
        reading.source,
        reading.observed_at,
        reading.kind,
        reading.forecast.len(),
        reading
            .forecast_min()
            .map(|p| format!(", minimum {:.1} at {}", p.grams_per_kwh, p.at))
            .unwrap_or_default()
    );
    Ok(())
}

/// `carbon-kube cleanup`: what the uninstall hook runs once the agents are gone.
async fn cleanup(args: CleanupArgs) -> Result<()> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    carbon_kube::cleanup::run(Api::all(client), args.timeout, args.settle).await
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(kubeclient::client(&kubeclient::config(kubeconfig).await?)?)
}

async fn agent(config: AgentConfig) -> Result<()> {
    let kube_config = kubeclient::config(config.kubeconfig.as_deref()).await?;
    let client = kubeclient::client(&kube_config)?;
    require_crd(&client).await?;
    let (sampler, power) = node_power(&client, &config)
        .await
        .context("deciding this node's power model")?;
    let metrics = Metrics::new(&config.node_name);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let listener = metrics::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics server to {}", config.metrics_addr))?;
    let mut tasks = Supervisor::default();
    tasks.spawn(
        "metrics server",
        metrics::serve(listener, metrics.clone(), shutdown.clone()),
    );

    // Election: followers only watch; the leader polls and writes CarbonScores.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let (elector, is_leader) = Elector::new(leases, LEASE_NAME, &config.identity, config.election);
    let fence = elector.fence();
    tasks.spawn("leader election", elector.run(shutdown.clone()));
    let shared = match &config.shared_scores_kubeconfig {
        Some(path) => {
            let source = kube_client(Some(path))
                .await
                .context("--shared-scores-kubeconfig")?;
            let provider = SharedScores::new(Api::all(source), config.reconciler.decision.max_age);
            Some(Arc::new(provider) as Arc<dyn Provider>)
        }
        None => None,
    };
    let chain = Arc::new(build_chain(&config.providers, shared));
    let poller = {
        let (client, metrics, settings) = (client.clone(), metrics.clone(), config.poller);
        move || {
            let (chain, fence) = (chain.clone(), fence.clone());
            Poller::new(
                client.clone(),
                chain,
                metrics.clone(),
                settings.clone(),
                fence,
            )
        }
    };
    // Leader, opt-in per ClusterQueue: Kueue's carbon-kube.io/green-window AdmissionChecks.
    if let Some(settings) = config.kueue {
        tasks.spawn(
            "kueue green window",
            carbon_kube::kueue::controller::while_leader(
                is_leader.clone(),
                client.clone(),
                CheckMetrics::new(&metrics),
                settings,
            ),
        );
    }
    // Leader of a MultiKueue manager: nominate the greenest worker for each Workload.
    if let Some(settings) = config.kueue_dispatcher {
        tasks.spawn(
            "kueue dispatcher",
            carbon_kube::kueue::dispatch::while_leader(
                is_leader.clone(),
                client.clone(),
                carbon_kube::kueue::dispatch::DispatchMetrics::new(&metrics),
                settings,
            ),
        );
    }
    // Leader, opt-in per pod: release pods gated by carbon-kube.io/defer at their greenest start.
    let deferral = config.deferral.map(|settings| {
        let (client, metrics) = (client.clone(), metrics.clone());
        move || Deferral::new(client.clone(), metrics.clone(), settings.clone(), power)
    });
    tasks.spawn(
        "leader work",
        leader_work(is_leader, metrics.clone(), poller, deferral),
    );

    // Every agent: its own node, and its own emissions.
    let (intensity_tx, intensity_rx) = watch::channel(None);
    let settings = config.emissions;
    let mut emissions = EmissionsLoop::new(sampler, power, &settings, metrics.clone());
    let reconciler = Reconciler::new(
        client.clone(),
        &config.node_name,
        config.reconciler,
        metrics.clone(),
        intensity_tx,
    )
    .with_power_note(emissions.power_note());
    tasks.spawn("reconciler", reconciler.run(shutdown.clone()));
    // Per-pod power and CO2, where the host's pod cgroups are visible.
    let pods = attribution::start(
        &settings.cgroup_root,
        client.clone(),
        &config.node_name,
        metrics.clone(),
        shutdown.clone(),
    );
    if let Some((attribution, pod_watch)) = pods {
        tasks.spawn("pod watch", pod_watch);
        emissions = emissions.with_attribution(attribution);
    }
    tasks.spawn("emissions", emissions.run(intensity_rx, shutdown.clone()));
    // Every agent, opt-in per pod: move labelled pods off its node while it stays tainted.
    if let Some(settings) = config.migration {
        let migrator = Migrator::new(&kube_config, &config.node_name, metrics.clone(), settings)?;
        tasks.spawn("migration", migrator.run(shutdown.clone()));
    }

    info!(node = %config.node_name, identity = %config.identity, "agent started");
    // Every task runs until shutdown: one that ends first stops the agent,
    // with a non-zero exit, and the kubelet restarts it.
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        exit = tasks.first_exit() => Err(exit),
    };
    match &outcome {
        Ok(()) => info!("shutting down"),
        Err(exit) => error!(task = exit.task, "{exit}; stopping the agent"),
    }
    let _ = shutdown_tx.send(true);
    // The elector releases the Lease so a follower takes over at once.
    tasks.stop(SHUTDOWN_GRACE).await;
    Ok(outcome?)
}

async fn require_crd(client: &Client) -> Result<()> {
    let scores: Api<CarbonScore> = Api::all(client.clone());
    let first = kube::api::ListParams::default().limit(1);
    let listed = kubeclient::until_reachable("listing CarbonScores", || scores.list(&first)).await;
    match listed {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the CarbonScore CRD is not installed; install it with `carbon-kube crd | kubectl apply -f -`"
        ),
        Err(e) => bail!("cannot list CarbonScores: {e}"),
    }
}

/// The node's one power model, from this host's CPU and the node's cloud
/// (its providerID or region label, unless `--cloud` says). A Node not
/// (yet) in the API says nothing about its cloud; any other failure stops the start.
async fn node_power(
    client: &Client,
    config: &AgentConfig,
) -> Result<(HostSampler, PowerCoefficients), carbon_kube::error::Error> {
    let mut sampler = HostSampler::new()?;
    let host = sampler.sample();
    let nodes = Api::<Node>::all(client.clone());
    let node = match kubeclient::until_reachable("reading this node", || {
        nodes.get(&config.node_name)
    })
    .await
    {
        Ok(node) => Some(node),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            warn!(node = %config.node_name, "own Node not found: its cloud is not known from it");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let provider_id = node
        .as_ref()
        .and_then(|n| n.spec.as_ref()?.provider_id.as_deref());
    let region = node
        .as_ref()
        .and_then(|n| n.labels().get(REGION_LABEL))
        .map(String::as_str);
    let power = config
        .emissions
        .power
        .node_power(&host, provider_id, region)?;
    info!(
        cpu = %host.cpu_brand,
        vcpus = host.vcpus,
        cloud = %power.cloud,
        cloud_from = power.cloud_source.as_str(),
        coefficients = ?power.coefficients,
        "power model ready"
    );
    Ok((sampler, power.coefficients))
}

/// Runs the poller (and deferral, when on) while this agent leads, and stops
/// them the moment it does not.
async fn leader_work(
    mut is_leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    poller: impl Fn() -> Poller,
    deferral: Option<impl Fn() -> Deferral>,
) {
    loop {
        if is_leader.wait_for(|leader| *leader).await.is_err() {
            return;
        }
        metrics.set_leader(true);
        let deferral = async {
            match &deferral {
                Some(deferral) => deferral().run().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = poller().run() => {}
            _ = deferral => {}
            _ = is_leader.wait_for(|leader| !*leader) => {}
        }
        metrics.set_leader(false);
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
