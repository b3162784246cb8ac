{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "xks-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "xks-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "xks-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "xks-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xks-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "xks-operator.labels" -}}
helm.sh/chart: {{ include "xks-operator.chart" . }}
{{ include "xks-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xks-operator
{{- end }}

{{- define "xks-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "xks-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "xks-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "xks-operator.fullname" .)) .Values.leaderElection.leaseName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "xks-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Combinations the schema cannot express well; fail with a message that says
what to change. Included from deployment.yaml so it always runs.
*/}}
{{- define "xks-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount=%d requires leaderElection.enabled=true: without a leader lease several replicas would reconcile the same KMS key stores at once. Set leaderElection.enabled=true or replicaCount=1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.rbac.namespaced (not .Values.watchNamespace) }}
{{- fail "rbac.namespaced=true requires watchNamespace: a namespaced Role only grants access in one namespace, so the operator must watch only that namespace." }}
{{- end }}
{{- end }}
