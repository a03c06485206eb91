{{/*
Names. Object names are DNS labels: at most 63 characters.
*/}}
{{- define "ckb-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ckb-operator.fullname" -}}
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

{{- define "ckb-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ckb-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration (cluster-scoped, so per release). */}}
{{- define "ckb-operator.webhookConfigurationName" -}}
{{- default (include "ckb-operator.fullname" .) .Values.webhook.configurationName -}}
{{- end -}}

{{/* Secret holding the operator's own CA and serving certificate (or cert-manager's). */}}
{{- define "ckb-operator.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "ckb-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Lease the replicas elect the controller leader with (the operator's default for the release name ckb-operator). */}}
{{- define "ckb-operator.leaseName" -}}
{{- include "ckb-operator.fullname" . -}}
{{- end -}}

{{- define "ckb-operator.serviceName" -}}
{{- include "ckb-operator.fullname" . -}}
{{- end -}}

{{- define "ckb-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ckb-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ckb-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ckb-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ckb-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ckb-operator
{{- end -}}

{{/* Where the cert-manager Secret is mounted; the operator reads tls.crt/tls.key from it. */}}
{{- define "ckb-operator.certDir" -}}
/etc/ckb-operator/tls
{{- end -}}

{{/* Does the operator manage its own CA, Secret and caBundle? (not with cert-manager) */}}
{{- define "ckb-operator.selfManagedTls" -}}
{{- if not .Values.certManager.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Fails with a clear message when the cluster (or `helm template --api-versions`) does not serve an
API a rendered object needs, e.g. the Prometheus Operator's CRDs. Argument: (list $ "group/version/Kind" "value.that.asked").
*/}}
{{- define "ckb-operator.requireApi" -}}
{{- $root := index . 0 }}
{{- $api := index . 1 }}
{{- $value := index . 2 }}
{{- if not ($root.Capabilities.APIVersions.Has $api) }}
{{- fail (printf "%s is true, but the cluster has no %s API (its CRD is not installed): install the Prometheus Operator CRDs first, set %s=false, or with `helm template` pass --api-versions %s" $value $api $value $api) }}
{{- end }}
{{- end }}
