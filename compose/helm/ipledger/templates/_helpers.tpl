{{/* Names, labels and the settings every ipledger container shares. */}}

{{- define "ipledger.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ipledger.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: call with (list $ "allocator"). */}}
{{- define "ipledger.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ipledger.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ipledger.databaseSecret" -}}
{{- if .Values.database.url -}}
{{ include "ipledger.fullname" . }}-database
{{- else -}}
{{ .Values.database.existingSecret }}
{{- end -}}
{{- end -}}

{{/* The database URL: every process reads it. */}}
{{- define "ipledger.databaseEnv" -}}
- name: IPLEDGER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ipledger.databaseSecret" . }}
      key: {{ .Values.database.key }}
{{- end -}}

{{/* The API's read-only role: what `ipledger init` creates and `ipledger api` connects as. */}}
{{- define "ipledger.apiDatabaseEnv" -}}
- name: IPLEDGER_API_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ipledger.databaseSecret" . }}
      key: {{ .Values.database.apiKey }}
      optional: true
{{- end -}}

{{/* The log: what init, append and run read. */}}
{{- define "ipledger.logEnv" -}}
- name: IPLEDGER_LOG
  value: {{ .Values.log.kind | quote }}
{{- if eq .Values.log.kind "kafka" }}
- name: IPLEDGER_KAFKA_BOOTSTRAP
  value: {{ required "log.kafkaBootstrap is required with log.kind=kafka" .Values.log.kafkaBootstrap | quote }}
- name: IPLEDGER_EVENTS_TOPIC
  value: {{ .Values.log.eventsTopic | quote }}
- name: IPLEDGER_DECISIONS_TOPIC
  value: {{ .Values.log.decisionsTopic | quote }}
{{- end }}
- name: IPLEDGER_PARTITIONS
  value: {{ .Values.log.partitions | quote }}
{{- end -}}

{{/* Spread a component's replicas over nodes unless the values say otherwise. */}}
{{- define "ipledger.affinity" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $affinity := index . 2 -}}
{{- if $affinity -}}
{{ toYaml $affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "ipledger.selector" (list $root $component) | nindent 12 }}
{{- end -}}
{{- end -}}
