{{/* Names. */}}
{{- define "carbon-kube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "carbon-kube.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "carbon-kube.serviceAccountName" -}}
{{- default (include "carbon-kube.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The agent's user name as the API server sees it: what the admission policies match. */}}
{{- define "carbon-kube.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "carbon-kube.serviceAccountName" .) -}}
{{- end -}}

{{- define "carbon-kube.secretName" -}}
{{- printf "%s-provider-keys" (include "carbon-kube.fullname" .) -}}
{{- end -}}

{{/* Labels. */}}
{{- define "carbon-kube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "carbon-kube.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "carbon-kube.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "carbon-kube.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: carbon-kube
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "carbon-kube.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Where each provider's key comes from: a dict with secret (name), key, file (path in the
container), or an empty dict when the provider has no key configured.
*/}}
{{- define "carbon-kube.electricityMapsKey" -}}
{{- $p := .Values.providers.electricityMaps -}}
{{- if and $p.token $p.existingSecret -}}
{{- fail "providers.electricityMaps: set token or existingSecret, not both" -}}
{{- end -}}
{{- if $p.existingSecret -}}
{{- toJson (dict "secret" $p.existingSecret "key" $p.existingSecretKey "volume" "electricity-maps-token" "dir" "/var/run/secrets/carbon-kube/electricity-maps" "file" "token") -}}
{{- else if $p.token -}}
{{- toJson (dict "secret" (include "carbon-kube.secretName" .) "key" "electricity-maps-token" "volume" "electricity-maps-token" "dir" "/var/run/secrets/carbon-kube/electricity-maps" "file" "token") -}}
{{- else -}}
{{- toJson (dict) -}}
{{- end -}}
{{- end -}}

{{- define "carbon-kube.watttimeKey" -}}
{{- $p := .Values.providers.watttime -}}
{{- if and $p.password $p.existingSecret -}}
{{- fail "providers.watttime: set password or existingSecret, not both" -}}
{{- end -}}
{{- if and (or $p.password $p.existingSecret) (not $p.username) -}}
{{- fail "providers.watttime: a password needs providers.watttime.username" -}}
{{- end -}}
{{- if $p.existingSecret -}}
{{- toJson (dict "secret" $p.existingSecret "key" $p.existingSecretKey "volume" "watttime-password" "dir" "/var/run/secrets/carbon-kube/watttime" "file" "password") -}}
{{- else if $p.password -}}
{{- toJson (dict "secret" (include "carbon-kube.secretName" .) "key" "watttime-password" "volume" "watttime-password" "dir" "/var/run/secrets/carbon-kube/watttime" "file" "password") -}}
{{- else -}}
{{- toJson (dict) -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "carbon-kube.validate" -}}
{{- if eq .Values.policy "absolute" -}}
{{- if ge (float64 .Values.hysteresis) (float64 .Values.threshold) -}}
{{- fail (printf "hysteresis (%v) must be below threshold (%v)" .Values.hysteresis .Values.threshold) -}}
{{- end -}}
{{- if gt (float64 .Values.taintFloor) 0.0 -}}
{{- fail "taintFloor applies to policy relative only (under absolute, threshold is the line)" -}}
{{- end -}}
{{- else if and (gt (float64 .Values.hysteresis) 0.0) (ge (float64 .Values.hysteresis) (float64 .Values.minSpread)) -}}
{{- fail (printf "hysteresis (%v) must be below minSpread (%v) under policy relative" .Values.hysteresis .Values.minSpread) -}}
{{- end -}}
{{- end -}}

{{/*
The projected service-account token volume, spelled out instead of automounted so that
its lifetime is explicit and no other pod of this service account gets a token.
*/}}
{{- define "carbon-kube.apiAccessVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .Values.serviceAccount.tokenExpirationSeconds }}
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end -}}

{{/* 65532; the agent (called with "agent" true) as root, capabilities still all dropped, for RAPL's root-only counters. */}}
{{- define "carbon-kube.runAs" -}}
{{- if and .agent .Values.power.rapl.enabled -}}
runAsNonRoot: false
runAsUser: 0
runAsGroup: 0
{{- else -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
{{- end -}}
{{- end -}}

{{- define "carbon-kube.podSecurityContext" -}}
{{ include "carbon-kube.runAs" . }}
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "carbon-kube.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
{{ include "carbon-kube.runAs" . }}
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
