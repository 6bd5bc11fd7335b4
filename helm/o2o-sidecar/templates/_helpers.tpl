{{/*
Names, labels and the sidecar's settings.

Every helper here takes the o2o-sidecar chart's own context. An application chart that has this
chart as a dependency passes `(index .Subcharts "o2o-sidecar")`, so `.Values` are the sidecar's
values (defaults merged with the app chart's `o2o-sidecar:` block), `.Chart` is this chart and
`.Release` is the app's release: names then match the objects this chart renders.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "o2o-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: `<release>-o2o-sidecar` (or the release name when it already contains it). */}}
{{- define "o2o-sidecar.fullname" -}}
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
{{- define "o2o-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels. */}}
{{- define "o2o-sidecar.labels" -}}
helm.sh/chart: {{ include "o2o-sidecar.chart" . }}
{{ include "o2o-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: payments-sidecar
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "o2o-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "o2o-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image reference: repository:tag, or repository@digest when a digest is given. */}}
{{- define "o2o-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of the standalone Deployment. */}}
{{- define "o2o-sidecar.serviceAccountName" -}}
{{- if .Values.standalone.serviceAccount.create }}
{{- default (include "o2o-sidecar.fullname" .) .Values.standalone.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.standalone.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap that holds the sidecar's non-secret settings. */}}
{{- define "o2o-sidecar.configMapName" -}}
{{- include "o2o-sidecar.fullname" . }}
{{- end }}

{{/* The Secret that holds the DOKU Secret Key: the existing one, or the chart's own. */}}
{{- define "o2o-sidecar.secretName" -}}
{{- if .Values.doku.existingSecret }}
{{- .Values.doku.existingSecret }}
{{- else }}
{{- printf "%s-doku" (include "o2o-sidecar.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The key of the DOKU Secret Key inside that Secret. */}}
{{- define "o2o-sidecar.secretKeyKey" -}}
{{- if .Values.doku.existingSecret }}
{{- .Values.doku.existingSecretKey }}
{{- else -}}
secret-key
{{- end }}
{{- end }}

{{/* Where the Secret is mounted, and the file the sidecar reads. */}}
{{- define "o2o-sidecar.secretDir" -}}
/etc/o2o-sidecar/doku
{{- end }}
{{- define "o2o-sidecar.secretKeyFile" -}}
{{- include "o2o-sidecar.secretDir" . }}/secret-key
{{- end }}

{{/* The gRPC target the app dials: `127.0.0.1:50051` by default. */}}
{{- define "o2o-sidecar.grpcTarget" -}}
{{- printf "%s:%d" .Values.grpc.bindAddress (int .Values.grpc.port) }}
{{- end }}

{{/*
Fails rendering on settings that cannot work, with a message that says what to set.
*/}}
{{- define "o2o-sidecar.validate" -}}
{{- if not .Values.doku.clientId }}
{{- fail "o2o-sidecar: set doku.clientId (the Client-Id from DOKU's Back Office)" }}
{{- end }}
{{- if and (not .Values.doku.existingSecret) (not .Values.doku.secretKey) }}
{{- fail "o2o-sidecar: set doku.existingSecret (recommended) or doku.secretKey: the sidecar needs DOKU's Secret Key" }}
{{- end }}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret) }}
{{- fail "o2o-sidecar: store.type=postgres needs store.postgres.existingSecret (a Secret holding the URL)" }}
{{- end }}
{{- end }}

{{/*
Fails when more than one pod would use one SQLite store. Call it from any template that sets
the replica count of pods running the sidecar:
  {{ include "o2o-sidecar.assertReplicas" (list $sidecar .Values.replicaCount) }}
*/}}
{{- define "o2o-sidecar.assertReplicas" -}}
{{- $ctx := index . 0 }}
{{- $replicas := int (index . 1) }}
{{- if and (gt $replicas 1) (eq $ctx.Values.store.type "sqlite") }}
{{- fail (printf "o2o-sidecar: %d replicas need store.type=postgres: a SQLite file belongs to one pod" $replicas) }}
{{- end }}
{{- end }}

{{/*
The sidecar's settings as O2O_* environment variables (the env twins of its flags). Rendered into
the ConfigMap; its checksum rolls the pods when a setting changes. The PostgreSQL URL is not
here: it comes from a Secret (see the container partial).
*/}}
{{- define "o2o-sidecar.config" -}}
O2O_GRPC_ADDR: {{ include "o2o-sidecar.grpcTarget" . | quote }}
O2O_HTTP_ADDR: {{ printf "%s:%d" .Values.notifications.bindAddress (int .Values.notifications.port) | quote }}
O2O_ADMIN_ADDR: {{ printf "%s:%d" .Values.admin.bindAddress (int .Values.admin.port) | quote }}
O2O_NOTIFICATION_PATH: {{ .Values.notifications.path | quote }}
O2O_LOG_FORMAT: {{ .Values.logFormat | quote }}
O2O_DOKU_BASE_URL: {{ .Values.doku.baseUrl | quote }}
O2O_DOKU_CLIENT_ID: {{ .Values.doku.clientId | quote }}
O2O_DOKU_SECRET_KEY_FILE: {{ include "o2o-sidecar.secretKeyFile" . | quote }}
O2O_DOKU_TIMEOUT: {{ .Values.doku.timeout | quote }}
O2O_DOKU_CONNECT_TIMEOUT: {{ .Values.doku.connectTimeout | quote }}
O2O_DOKU_MAX_ATTEMPTS: {{ .Values.doku.maxAttempts | int | quote }}
{{- with .Values.doku.howToPayHosts }}
O2O_HOW_TO_PAY_HOSTS: {{ join "," . | quote }}
{{- end }}
O2O_HOW_TO_PAY_TIMEOUT: {{ .Values.doku.howToPayTimeout | quote }}
O2O_EVENT_RETENTION: {{ .Values.events.retention | quote }}
{{- if eq .Values.store.type "sqlite" }}
O2O_STORE: {{ printf "sqlite://%s/%s" (trimSuffix "/" .Values.store.sqlite.dataDir) .Values.store.sqlite.fileName | quote }}
{{- else }}
O2O_STORE_POOL_SIZE: {{ .Values.store.postgres.poolSize | int | quote }}
O2O_STORE_CONNECT_TIMEOUT: {{ .Values.store.postgres.connectTimeout | quote }}
O2O_STORE_STATEMENT_TIMEOUT: {{ .Values.store.postgres.statementTimeout | quote }}
{{- end }}
{{- if .Values.apiToken.existingSecret }}
O2O_API_TOKEN_FILE: {{ include "o2o-sidecar.apiTokenFile" . | quote }}
{{- end }}
{{- if .Values.tls.enabled }}
O2O_TLS_CERT_FILE: {{ printf "%s/tls.crt" (include "o2o-sidecar.tlsDir" .) | quote }}
O2O_TLS_KEY_FILE: {{ printf "%s/tls.key" (include "o2o-sidecar.tlsDir" .) | quote }}
{{- end }}
{{- with .Values.opentelemetry }}
{{- if .endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .endpoint | quote }}
{{- end }}
{{- if .protocol }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .protocol | quote }}
{{- end }}
{{- if .serviceName }}
OTEL_SERVICE_NAME: {{ .serviceName | quote }}
{{- end }}
{{- if .resourceAttributes }}
OTEL_RESOURCE_ATTRIBUTES: {{ .resourceAttributes | quote }}
{{- end }}
{{- if .sampler }}
OTEL_TRACES_SAMPLER: {{ .sampler | quote }}
{{- end }}
{{- if .samplerArg }}
OTEL_TRACES_SAMPLER_ARG: {{ .samplerArg | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the API token Secret and the TLS Secret are mounted (whole directories, so that a
rotated Secret reaches the sidecar, which re-reads the files). */}}
{{- define "o2o-sidecar.apiTokenDir" -}}
/etc/o2o-sidecar/api-token
{{- end }}
{{- define "o2o-sidecar.apiTokenFile" -}}
{{- include "o2o-sidecar.apiTokenDir" . }}/token
{{- end }}
{{- define "o2o-sidecar.tlsDir" -}}
/etc/o2o-sidecar/tls
{{- end }}

{{/*
Pod annotations for any pod that runs the sidecar: a checksum of the settings, so that a change
rolls the pods (environment from a ConfigMap is read only at container start). The DOKU Secret
Key is deliberately not part of it: the sidecar re-reads the mounted key file when it changes,
so rotating the key needs no restart.
*/}}
{{- define "o2o-sidecar.podAnnotations" -}}
checksum/config: {{ include "o2o-sidecar.config" . | sha256sum }}
{{- end }}
