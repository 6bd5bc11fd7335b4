{{/*
The sidecar container, for an application chart to include in its own pod template.

Context: the o2o-sidecar chart's context. From an app chart that declares this chart as a
dependency, pass `(index .Subcharts "o2o-sidecar")`; inside this chart, pass `.`.

Renders one list item. With `nativeSidecar: true` it carries `restartPolicy: Always` and
belongs under `initContainers`; otherwise it belongs under `containers`:

  {{- $sidecar := index .Subcharts "o2o-sidecar" }}
  spec:
    template:
      metadata:
        annotations:
          {{- include "o2o-sidecar.podAnnotations" $sidecar | nindent 10 }}
      spec:
        {{- if $sidecar.Values.nativeSidecar }}
        initContainers:
          {{- include "o2o-sidecar.container" $sidecar | nindent 10 }}
        {{- end }}
        containers:
          - name: app
            ...
          {{- if not $sidecar.Values.nativeSidecar }}
          {{- include "o2o-sidecar.container" $sidecar | nindent 10 }}
          {{- end }}
        volumes:
          {{- include "o2o-sidecar.volumes" $sidecar | nindent 10 }}

The app reaches the sidecar at `127.0.0.1:50051` (`include "o2o-sidecar.grpcTarget" $sidecar`).
Its container ports are named `o2o-notify` (DOKU's notifications: point the app's Service
there) and `o2o-admin`; port names are unique within a pod, hence the prefix. The gRPC port is
not declared as a container port: it listens on loopback and no Service may reach it.
*/}}
{{- define "o2o-sidecar.container" -}}
{{- include "o2o-sidecar.validate" . -}}
- name: o2o-sidecar
  image: {{ include "o2o-sidecar.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.nativeSidecar }}
  # Native sidecar: started before the app containers (once the startup probe passes) and
  # stopped after them.
  restartPolicy: Always
  {{- end }}
  args: ["serve"]
  envFrom:
    - configMapRef:
        name: {{ include "o2o-sidecar.configMapName" . }}
  {{- if or (eq .Values.store.type "postgres") .Values.extraEnv }}
  env:
    {{- if eq .Values.store.type "postgres" }}
    - name: O2O_STORE
      valueFrom:
        secretKeyRef:
          name: {{ .Values.store.postgres.existingSecret }}
          key: {{ .Values.store.postgres.existingSecretKey }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    - name: o2o-notify
      containerPort: {{ .Values.notifications.port }}
      protocol: TCP
    - name: o2o-admin
      containerPort: {{ .Values.admin.port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /ready
      port: o2o-admin
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /live
      port: o2o-admin
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: /ready
      port: o2o-admin
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  {{- if gt (int .Values.preStopSleepSeconds) 0 }}
  lifecycle:
    # The image has no shell and no `sleep`: the kubelet's sleep action (Kubernetes >= 1.30).
    preStop:
      sleep:
        seconds: {{ .Values.preStopSleepSeconds }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    privileged: false
    seccompProfile:
      type: RuntimeDefault
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    # The whole directory, not a subPath: only then does the kubelet update the file when the
    # Secret changes, and the sidecar re-reads it (key rotation without restart).
    - name: o2o-sidecar-doku
      mountPath: {{ include "o2o-sidecar.secretDir" . }}
      readOnly: true
    {{- if eq .Values.store.type "sqlite" }}
    - name: o2o-sidecar-data
      mountPath: {{ .Values.store.sqlite.dataDir }}
    {{- end }}
    {{- if .Values.apiToken.existingSecret }}
    - name: o2o-sidecar-api-token
      mountPath: {{ include "o2o-sidecar.apiTokenDir" . }}
      readOnly: true
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: o2o-sidecar-tls
      mountPath: {{ include "o2o-sidecar.tlsDir" . }}
      readOnly: true
    {{- end }}
{{- end }}

{{/*
The pod volumes the sidecar container mounts (list items, same context as the container).
*/}}
{{- define "o2o-sidecar.volumes" -}}
- name: o2o-sidecar-doku
  secret:
    secretName: {{ include "o2o-sidecar.secretName" . }}
    # Read-only for everyone in the container: the sidecar runs as 65532 and the pod may set no
    # fsGroup; the volume is mounted into the sidecar container only.
    defaultMode: 0444
    items:
      - key: {{ include "o2o-sidecar.secretKeyKey" . }}
        path: secret-key
{{- if eq .Values.store.type "sqlite" }}
- name: o2o-sidecar-data
  {{- if .Values.store.sqlite.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.store.sqlite.existingClaim }}
  {{- else }}
  emptyDir:
    {{- with .Values.store.sqlite.sizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
  {{- end }}
{{- end }}
{{- if .Values.apiToken.existingSecret }}
- name: o2o-sidecar-api-token
  secret:
    secretName: {{ .Values.apiToken.existingSecret }}
    defaultMode: 0444
    items:
      - key: {{ .Values.apiToken.existingSecretKey }}
        path: token
{{- end }}
{{- if .Values.tls.enabled }}
- name: o2o-sidecar-tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0444
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
