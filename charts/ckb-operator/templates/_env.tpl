{{/*
The operator's configuration as CKB_* environment variables (every flag of `ckb-operator run` has
one). A chart test fails when this sets a variable the binary does not know. Values left empty keep
the operator's built-in default.
*/}}
{{- define "ckb-operator.env" -}}
- name: CKB_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: CKB_WEBHOOK_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: CKB_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: CKB_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: CKB_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: CKB_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
- name: CKB_KV_CREDENTIAL
  value: {{ .Values.keyVault.credential | quote }}
{{- with .Values.keyVault.allowedVaults }}
- name: CKB_ALLOWED_VAULTS
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.bounds.allowedAuthorities }}
- name: CKB_ALLOWED_AUTHORITIES
  value: {{ join "," . | quote }}
{{- end }}
{{- with .Values.bounds.allowedComplianceStatuses }}
- name: CKB_ALLOWED_COMPLIANCE_STATUSES
  value: {{ join "," . | quote }}
{{- end }}
- name: CKB_ALLOW_DEBUGGABLE
  value: {{ .Values.bounds.allowDebuggable | quote }}
- name: CKB_ALLOW_ADOPT
  value: {{ .Values.bounds.allowAdopt | quote }}
- name: CKB_ALLOW_DELETE
  value: {{ .Values.bounds.allowDelete | quote }}
- name: CKB_REQUIRE_GRANT
  value: {{ .Values.bounds.requireGrant | quote }}
- name: CKB_KV_NAMESPACE_SHARE
  value: {{ .Values.bounds.namespaceSharePercent | quote }}
- name: CKB_RESYNC_PERIOD
  value: {{ .Values.controller.resyncPeriod | quote }}
- name: CKB_HASH_GRACE_PERIOD
  value: {{ .Values.controller.hashGracePeriod | quote }}
- name: CKB_HASH_RETENTION_CEILING
  value: {{ .Values.controller.hashRetentionCeiling | quote }}
- name: CKB_POLICY_SOURCE_DEFAULT
  value: {{ .Values.controller.policySourceDefault | quote }}
- name: CKB_CLEANUP_TIMEOUT
  value: {{ .Values.controller.cleanupTimeout | quote }}
- name: CKB_LEADER_ELECTION_LEASE
  value: {{ include "ckb-operator.leaseName" . | quote }}
- name: CKB_WEBHOOK_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.webhook.port) | quote }}
- name: CKB_WEBHOOK_CONFIG_NAME
  value: {{ include "ckb-operator.webhookConfigurationName" . | quote }}
- name: CKB_WEBHOOK_SERVICE
  value: {{ include "ckb-operator.serviceName" . | quote }}
{{- if .Values.certManager.enabled }}
- name: CKB_WEBHOOK_CERT_DIR
  value: {{ include "ckb-operator.certDir" . | quote }}
{{- else }}
- name: CKB_WEBHOOK_SECRET
  value: {{ include "ckb-operator.webhookSecretName" . | quote }}
{{- end }}
- name: CKB_CONFIDENTIAL_RUNTIME_CLASSES
  value: {{ join "," .Values.webhook.confidentialRuntimeClasses | quote }}
{{- with .Values.sidecar.image }}
- name: CKB_SIDECAR_IMAGE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.sidecar.port }}
- name: CKB_SIDECAR_PORT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.sidecar.logLevel }}
- name: CKB_SIDECAR_LOG_LEVEL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
