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
{{- /* Values removed in favour of watchNamespaces. Their old defaults ("" and
false) mean what an empty watchNamespaces means and are ignored, so that
`helm upgrade --reuse-values` from an older chart still renders. */}}
{{- $removed := list }}
{{- with .Values.watchNamespace }}
{{- $removed = append $removed (printf "watchNamespace was replaced by watchNamespaces, a list: set watchNamespaces: [%v] and remove watchNamespace (with --reuse-values: --set watchNamespace=null). A non-empty watchNamespaces also grants the operator its access by a Role in each listed namespace instead of a ClusterRole." .) }}
{{- end }}
{{- if (.Values.rbac | default dict).namespaced }}
{{- $removed = append $removed "rbac.namespaced was removed: namespaced RBAC is implied by watchNamespaces (a non-empty list grants the operator a Role + RoleBinding in each listed namespace and nothing cluster-wide). Remove rbac.namespaced (with --reuse-values: --set rbac.namespaced=null) and list the namespaces in watchNamespaces, e.g. watchNamespaces: [payments]." }}
{{- end }}
{{- if $removed }}
{{- fail (join "\n" $removed) }}
{{- end }}
{{- end }}

{{/*
What the operator may do in the namespaces it watches: the rules of its
ClusterRole (all namespaces) or of its Role in each of watchNamespaces.
*/}}
{{- define "xks-operator.operatorRules" -}}
# Watch the resources it reconciles (get/list/watch), and add or remove its
# finalizer, which lives on the main resource (patch/update). The operator
# never creates or deletes ExternalKeyStores.
- apiGroups: ["xks-operator.io"]
  resources: ["externalkeystores"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Write status (server-side apply = patch); get to read it back.
- apiGroups: ["xks-operator.io"]
  resources: ["externalkeystores/status"]
  verbs: ["get", "patch"]
# Clusters with the OwnerReferencesPermissionEnforcement admission plugin
# require update on the finalizers subresource to set finalizers.
- apiGroups: ["xks-operator.io"]
  resources: ["externalkeystores/finalizers"]
  verbs: ["update"]
# Read the proxy credential Secrets named by spec.proxy.credentialsSecretRef,
# and watch them so a rotated secret is applied to KMS at once. Read-only:
# the operator never writes Secrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Record what it did as Events on the ExternalKeyStore (create, and patch
# to count repeats of the same event).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
