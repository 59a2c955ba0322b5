{{/* The chart name, at most 63 characters. */}}
{{- define "tokenbudget-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects, at most 63 characters (DNS label). A release whose
name already contains the chart name is not repeated: `tokenbudget-operator`, not
`tokenbudget-operator-tokenbudget-operator`.
*/}}
{{- define "tokenbudget-operator.fullname" -}}
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

{{/* `name-version` for the helm.sh/chart label. */}}
{{- define "tokenbudget-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object of the release carries. */}}
{{- define "tokenbudget-operator.labels" -}}
helm.sh/chart: {{ include "tokenbudget-operator.chart" . }}
{{ include "tokenbudget-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenbudget-operator
{{- end }}

{{/* The labels that select the operator's pod; they never change after install. */}}
{{- define "tokenbudget-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenbudget-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "tokenbudget-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenbudget-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "tokenbudget-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The labels of the uninstall hook's objects and pod. Its own app.kubernetes.io/name, so that
the operator Deployment's selector (name and instance) never matches the hook's pod: the hook
waits for the operator's pods to go, and must not wait for itself.
*/}}
{{- define "tokenbudget-operator.hookLabels" -}}
helm.sh/chart: {{ include "tokenbudget-operator.chart" . }}
app.kubernetes.io/name: {{ printf "%s-release" (include "tokenbudget-operator.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: uninstall-hook
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenbudget-operator
{{- end }}

{{/*
The uninstall hook's ServiceAccount and RBAC: created before its Job (lower weight), deleted
after it whether it succeeded or failed, and before the next attempt.
*/}}
{{- define "tokenbudget-operator.hookRbacAnnotations" -}}
helm.sh/hook: pre-delete
helm.sh/hook-weight: "-10"
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded,hook-failed
{{- end }}
