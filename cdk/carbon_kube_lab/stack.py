"""The lab: an EKS cluster with carbon-kube, its API key, monitoring and a sample job."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import (
    Annotations,
    CfnOutput,
    Duration,
    IgnoreMode,
    RemovalPolicy,
    Size,
    Stack,
    aws_ec2 as ec2,
    aws_ecr_assets as ecr_assets,
    aws_eks_v2 as eks,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_lambda as lambda_,
    aws_s3 as s3,
    aws_s3_assets as s3_assets,
    aws_secretsmanager as secretsmanager,
)
from aws_cdk.lambda_layer_kubectl_v33 import KubectlV33Layer
from constructs import Construct

from . import k8s
from .config import REPO_ROOT, LabConfig

FUNCTIONS = Path(__file__).resolve().parent / "functions"

_VERSIONS = {
    "1.32": eks.KubernetesVersion.V1_32,
    "1.33": eks.KubernetesVersion.V1_33,
    "1.34": eks.KubernetesVersion.V1_34,
}


class CarbonKubeLabStack(Stack):
    """One region of the lab. With `secondaryRegion`, the app makes a second one."""

    def __init__(self, scope: Construct, construct_id: str, *, config: LabConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        c = self.config = config

        # --- network: private subnets in at least two AZs for the nodes ----------------
        vpc_args = dict(
            ip_addresses=ec2.IpAddresses.cidr(c.vpc_cidr),
            nat_gateways=c.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                # /19: the VPC CNI gives every pod an address from the node's subnet.
                ec2.SubnetConfiguration(
                    name="nodes", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19
                ),
            ],
        )
        if c.availability_zones:
            vpc_args["availability_zones"] = list(c.availability_zones)
        else:
            vpc_args["max_azs"] = 2
        self.vpc = ec2.Vpc(self, "Vpc", **vpc_args)

        # --- cluster ------------------------------------------------------------------
        self.cluster = eks.Cluster(
            self,
            "Cluster",
            cluster_name=c.cluster_name,
            version=_VERSIONS[c.kubernetes_version],
            vpc=self.vpc,
            vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
            # Managed node groups below, not Auto Mode: the agent taints and labels
            # nodes that the lab owns and can see.
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=KubectlV33Layer(self, "KubectlLayer"),
                # helm renders kube-prometheus-stack in the handler: room beyond the 1 GiB default.
                memory=Size.gibibytes(2),
            ),
            output_config_command=False,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self._node_groups()
        admin_role_arn = self._admin_access()

        # --- the API key --------------------------------------------------------------
        agent_ns = self.cluster.add_manifest("AgentNamespace", k8s.namespace(k8s.AGENT_NAMESPACE))
        self.key_secret = self._key_secret()
        self.key_reader = self.cluster.add_service_account(
            "KeyReader", name=k8s.KEY_READER_SA, namespace=k8s.AGENT_NAMESPACE
        )
        self.key_reader.node.add_dependency(agent_ns)
        # GetSecretValue and DescribeSecret on this one secret: the role's only rights.
        self.key_secret.grant_read(self.key_reader.role)

        external_secrets = self.cluster.add_helm_chart(
            "ExternalSecrets",
            chart=k8s.ESO_CHART,
            repository=k8s.ESO_REPOSITORY,
            version=k8s.ESO_VERSION,
            release=k8s.ESO_CHART,
            namespace=k8s.ESO_NAMESPACE,
            create_namespace=True,
            values=k8s.external_secrets_values(),
            wait=True,
            timeout=Duration.minutes(10),
        )
        external_secrets.node.add_dependency(agent_ns)
        key_sync = self.cluster.add_manifest("KeySync", *k8s.key_sync(c.region, c.key_secret_name))
        key_sync.node.add_dependency(external_secrets)
        key_sync.node.add_dependency(self.key_reader)

        # --- monitoring (optional) ------------------------------------------------------
        monitoring = self._monitoring() if c.enable_monitoring else None

        # --- the agent, from this repository's chart and Dockerfile ----------------------
        chart_asset = s3_assets.Asset(self, "AgentChart", path=str(c.chart_dir))
        image = self._agent_image()
        self.agent = self.cluster.add_helm_chart(
            "Agent",
            chart_asset=chart_asset,
            release=k8s.AGENT_RELEASE,
            namespace=k8s.AGENT_NAMESPACE,
            create_namespace=False,
            values=k8s.agent_values(c, image),
            wait=True,
            timeout=Duration.minutes(10),
        )
        self.agent.node.add_dependency(agent_ns)
        self.agent.node.add_dependency(key_sync)
        if monitoring is not None:
            # The chart's PodMonitor needs the Prometheus operator's CRDs.
            self.agent.node.add_dependency(monitoring)

        # --- the sample batch job -------------------------------------------------------
        if c.sample_job:
            job = self.cluster.add_manifest("SampleJob", *k8s.sample_job())
            job.node.add_dependency(self.agent)

        # --- cost guard and the record ---------------------------------------------------
        if c.scale_to_zero_after_hours:
            self._scale_to_zero()
        self.metrics_bucket = self._metrics_export(monitoring) if monitoring is not None and c.metrics_export else None

        self._outputs(admin_role_arn)

    # ---------------------------------------------------------------------------------

    def _node_groups(self) -> None:
        c = self.config
        # One node group spread over the private subnets of every AZ; with `zones`, one
        # per simulated grid zone, each labelled so the agent reads that zone.
        groups = [(z, {k8s.ZONE_LABEL: z}) for z in c.zones] or [("", {})]
        self.node_groups = []
        for zone, labels in groups:
            suffix = k8s.dns_name(zone) if zone else "default"
            ng = self.cluster.add_nodegroup_capacity(
                f"Nodes-{suffix}",
                nodegroup_name=f"{c.cluster_name}-{suffix}"[:63],
                instance_types=[ec2.InstanceType(c.instance_type)],
                min_size=c.node_min_size,
                desired_size=c.node_desired_size,
                max_size=c.node_max_size,
                subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                labels=labels or None,
            )
            self.node_groups.append(ng)

    def _agent_image(self) -> k8s.Image | None:
        """The agent image: the one given, else built from the repository's Dockerfile.

        The build is a container image asset: `cdk synth` only stages the build context
        (the repository, less .dockerignore) into cdk.out; `cdk deploy` builds it with
        Docker for the nodes' architecture and pushes it to the bootstrap ECR repository,
        from which the nodes pull (their role has ECR read-only).
        """
        c = self.config
        if c.image_repository:
            return k8s.Image(c.image_repository, c.image_tag)
        arm = ec2.InstanceType(c.instance_type).architecture == ec2.InstanceArchitecture.ARM_64
        self.agent_image = ecr_assets.DockerImageAsset(
            self,
            "AgentImage",
            directory=str(REPO_ROOT),
            file="Dockerfile",
            ignore_mode=IgnoreMode.DOCKER,
            platform=ecr_assets.Platform.LINUX_ARM64 if arm else ecr_assets.Platform.LINUX_AMD64,
        )
        return k8s.Image(self.agent_image.repository.repository_uri, self.agent_image.image_tag)

    def _scale_to_zero(self) -> None:
        """An EventBridge schedule and a Lambda that scale every node group to zero."""
        c = self.config
        fn = lambda_.Function(
            self,
            "ScaleToZero",
            runtime=lambda_.Runtime.PYTHON_3_13,
            handler="index.handler",
            code=lambda_.Code.from_asset(str(FUNCTIONS / "scale_to_zero")),
            timeout=Duration.minutes(1),
            description=f"Cost guard: scales the node groups of {c.cluster_name} to zero",
            environment={
                "CLUSTER_NAME": c.cluster_name,
                "NODEGROUPS": ",".join(ng.nodegroup_name for ng in self.node_groups),
            },
        )
        # Describe and update these node groups, nothing else.
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["eks:DescribeNodegroup", "eks:UpdateNodegroupConfig"],
                resources=[ng.nodegroup_arn for ng in self.node_groups],
            )
        )
        # A rate schedule first fires that long after it is created, i.e. after deploy.
        events.Rule(
            self,
            "ScaleToZeroSchedule",
            description=f"Scale {c.cluster_name} to zero nodes {c.scale_to_zero_after_hours} h after deploy",
            schedule=events.Schedule.rate(Duration.hours(c.scale_to_zero_after_hours)),
            targets=[targets.LambdaFunction(fn, retry_attempts=2)],
        )
        self.scale_to_zero_function = fn

    def _metrics_export(self, monitoring: eks.HelmChart) -> s3.Bucket:
        """A bucket that outlives the lab, filled hourly from Prometheus by a CronJob."""
        c = self.config
        bucket = s3.Bucket(
            self,
            "MetricsBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            # The record is the point: `cdk destroy` leaves the bucket and its objects.
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
        )
        exporter = self.cluster.add_service_account(
            "MetricsExporter", name=k8s.EXPORT_SA, namespace=k8s.MONITORING_NAMESPACE
        )
        # The monitoring chart creates the namespace.
        exporter.node.add_dependency(monitoring)
        # PutObject (and its tagging/ACL-free relatives) on this bucket's objects only.
        bucket.grant_put(exporter.role)
        cron = self.cluster.add_manifest("MetricsExport", *k8s.metrics_export(c.cluster_name, bucket.bucket_name))
        cron.node.add_dependency(exporter)
        return bucket

    def _admin_access(self) -> str | None:
        """Cluster-admin access for people: a given principal, or a role for the account.

        The role has no IAM permissions of its own; an EKS access entry makes it cluster
        admin. Anyone in the account allowed to assume it can use the cluster.
        """
        c = self.config
        admin = eks.AccessPolicy.from_access_policy_name(
            "AmazonEKSClusterAdminPolicy", access_scope_type=eks.AccessScopeType.CLUSTER
        )
        if c.admin_principal_arn:
            self.cluster.grant_access("LabAdmin", c.admin_principal_arn, [admin])
            return None
        role = iam.Role(
            self,
            "LabAdminRole",
            assumed_by=iam.AccountRootPrincipal(),
            description=f"kubectl access to {c.cluster_name} (EKS access entry, no IAM permissions)",
            max_session_duration=Duration.hours(1),
        )
        self.cluster.grant_access("LabAdmin", role.role_arn, [admin])
        return role.role_arn

    def _key_secret(self) -> secretsmanager.ISecret:
        c = self.config
        if c.key_secret_existing or c.is_secondary:
            # The secondary region reads the primary's replica, which has the same name.
            return secretsmanager.Secret.from_secret_name_v2(self, "ProviderKey", c.key_secret_name)
        return secretsmanager.Secret(
            self,
            "ProviderKey",
            secret_name=c.key_secret_name,
            description=(
                "Electricity Maps API token for carbon-kube. Created with a random placeholder: "
                "put the real token with `aws secretsmanager put-secret-value`."
            ),
            # A generated placeholder: no value of the secret is ever in the template.
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=32
            ),
            replica_regions=(
                [secretsmanager.ReplicaRegion(region=c.secondary_region)] if c.secondary_region else None
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _monitoring(self) -> eks.HelmChart:
        c = self.config
        chart = self.cluster.add_helm_chart(
            "Monitoring",
            chart=k8s.MONITORING_CHART,
            repository=k8s.MONITORING_REPOSITORY,
            version=k8s.MONITORING_VERSION,
            release=k8s.MONITORING_RELEASE,
            namespace=k8s.MONITORING_NAMESPACE,
            create_namespace=True,
            values=k8s.monitoring_values(),
            wait=True,
            timeout=Duration.minutes(15),
        )
        boards = k8s.dashboards(c.dashboards_dir)
        for board in boards.objects:
            # One manifest per dashboard keeps each custom resource small.
            m = self.cluster.add_manifest("Dashboard-" + board["metadata"]["name"].removeprefix("carbon-kube-dashboard-"), board)
            m.node.add_dependency(chart)
        rules = k8s.prometheus_rule(c.rules_file)
        for rule in rules.objects:
            m = self.cluster.add_manifest("AlertRules", rule)
            m.node.add_dependency(chart)
        for why, loaded in (("NoDashboards", boards), ("NoAlertRules", rules)):
            if loaded.skipped:
                Annotations.of(self).add_warning_v2(f"carbon-kube-lab:{why}", loaded.skipped)
        self.dashboards_loaded = len(boards.objects)
        self.rules_loaded = bool(rules.objects)
        return chart

    def _outputs(self, admin_role_arn: str | None) -> None:
        c = self.config
        kubeconfig = f"aws eks update-kubeconfig --region {c.region} --name {c.cluster_name}"
        if admin_role_arn:
            kubeconfig += f" --role-arn {admin_role_arn}"
        CfnOutput(self, "ClusterName", value=c.cluster_name)
        CfnOutput(self, "KubeconfigCommand", value=kubeconfig, description="Point kubectl at the lab")
        CfnOutput(self, "KeySecretName", value=c.key_secret_name)
        if not c.is_secondary:
            CfnOutput(
                self,
                "SetKeyCommand",
                description="Store the real Electricity Maps token (synced into the cluster within 15 min)",
                value=(
                    f"aws secretsmanager put-secret-value --region {c.region} "
                    f"--secret-id {c.key_secret_name} --secret-string \"$ELECTRICITY_MAPS_TOKEN\""
                ),
            )
        if c.enable_monitoring:
            CfnOutput(
                self,
                "GrafanaCommand",
                description="Then open http://localhost:3000 (user admin)",
                value=f"kubectl -n {k8s.MONITORING_NAMESPACE} port-forward svc/{k8s.GRAFANA_SERVICE} 3000:80",
            )
            CfnOutput(
                self,
                "GrafanaPasswordCommand",
                value=(
                    f"kubectl -n {k8s.MONITORING_NAMESPACE} get secret {k8s.GRAFANA_SERVICE} "
                    "-o jsonpath='{.data.admin-password}' | base64 -d"
                ),
            )
        if self.metrics_bucket is not None:
            CfnOutput(self, "MetricsBucketName", value=self.metrics_bucket.bucket_name)
            CfnOutput(
                self,
                "ExportMetricsCommand",
                description="Export once more now, e.g. before cdk destroy (the bucket is kept)",
                value=(
                    f"kubectl -n {k8s.MONITORING_NAMESPACE} create job "
                    f"--from=cronjob/{k8s.EXPORT_CRONJOB} {k8s.EXPORT_CRONJOB}-final"
                ),
            )
        if c.scale_to_zero_after_hours:
            CfnOutput(
                self,
                "ScaleUpCommand",
                description="After the cost guard scaled the nodes to zero: back to the lab's size",
                value=" && ".join(
                    f"aws eks update-nodegroup-config --region {c.region} --cluster-name {c.cluster_name} "
                    f"--nodegroup-name {ng.nodegroup_name} --scaling-config "
                    f"minSize={c.node_min_size},desiredSize={c.node_desired_size},maxSize={c.node_max_size}"
                    for ng in self.node_groups
                ),
            )
        if c.sample_job:
            CfnOutput(
                self,
                "SampleJobCommand",
                value=f"kubectl -n {k8s.DEMO_NAMESPACE} get pods -o wide -l app.kubernetes.io/name={k8s.DEMO_JOB}",
            )
