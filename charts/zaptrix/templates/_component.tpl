{{/*
One template set for every component. Each named template takes (list $root $c) where $c is the
effective component config built by "zaptrix.componentConfig".
*/}}

{{/* ConfigMap data: the component's non-secret settings, exactly the ones its service reads. */}}
{{- define "zaptrix.configData" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $data := dict
  "ZAPTRIX_ENVIRONMENT" $root.Values.config.environment
  "ZAPTRIX_LOG_LEVEL" ($c.logLevel | default $root.Values.config.logLevel)
  "OTEL_SERVICE_NAME" $c.name
  "OTEL_TRACES_SAMPLER" $root.Values.otel.sampler
  "OTEL_TRACES_SAMPLER_ARG" ($root.Values.otel.samplerArg | toString)
-}}
{{- with include "zaptrix.otlpEndpoint" $root -}}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- end -}}
{{- if $c.connections.kafka -}}
{{- $_ := set $data "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS" $root.Values.kafka.bootstrapServers -}}
{{- $_ := set $data "ZAPTRIX_KAFKA_SECURITY_PROTOCOL" $root.Values.kafka.securityProtocol -}}
{{- $_ := set $data "ZAPTRIX_KAFKA_TOPIC_PREFIX" $root.Values.kafka.topicPrefix -}}
{{- if $root.Values.kafka.sasl.enabled -}}
{{- $_ := set $data "ZAPTRIX_KAFKA_SASL_MECHANISM" $root.Values.kafka.sasl.mechanism -}}
{{- $_ := set $data "ZAPTRIX_KAFKA_SASL_USERNAME" (required "kafka.sasl.username is required when kafka.sasl.enabled" $root.Values.kafka.sasl.username) -}}
{{- end -}}
{{- end -}}
{{- if $c.connections.mapper -}}
{{- $_ := set $data "ZAPTRIX_MAPPER_ADDR" (include "zaptrix.grpcAddr" (list $root "mapper")) -}}
{{- end -}}
{{- if $c.connections.tokenKeeper -}}
{{- $_ := set $data "ZAPTRIX_TOKEN_KEEPER_ADDR" (include "zaptrix.grpcAddr" (list $root "tokenKeeper")) -}}
{{- end -}}
{{- if include "zaptrix.usesGrpcTls" (list $root $c) -}}
{{- $dir := $root.Values.grpcTls.mountPath | trimSuffix "/" -}}
{{- $_ := set $data "ZAPTRIX_GRPC_TLS_CERT_FILE" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $data "ZAPTRIX_GRPC_TLS_KEY_FILE" (printf "%s/tls.key" $dir) -}}
{{- $_ := set $data "ZAPTRIX_GRPC_TLS_CA_FILE" (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- range $var, $key := include "zaptrix.secretFiles" (list $root $c) | fromJson -}}
{{- $_ := set $data (printf "%s_FILE" $var) (printf "%s/%s" ($root.Values.secrets.secretsMountPath | trimSuffix "/") $key) -}}
{{- end -}}
{{- if $root.Values.config.portalHostSuffixes -}}
{{- range $var := $c.portalHostsEnv -}}
{{- $_ := set $data $var (toJson $root.Values.config.portalHostSuffixes) -}}
{{- end -}}
{{- end -}}
{{- $publicUrl := include "zaptrix.publicBaseUrl" $root -}}
{{- if and $c.publicUrl $publicUrl -}}
{{- $_ := set $data "ZAPTRIX_PUBLIC_BASE_URL" $publicUrl -}}
{{- end -}}
{{- if and $c.metaWebhookUrl $publicUrl -}}
{{- $_ := set $data "ZAPTRIX_META_WEBHOOK_URL" (printf "%s/webhooks/meta" $publicUrl) -}}
{{- end -}}
{{- range $port, $envName := $c.portEnv -}}
{{- $_ := set $data $envName (index $c.ports $port | toString) -}}
{{- end -}}
{{- if $c.retentionSettings -}}
{{- /* The mapper's retention days: its server answers SetPortalInstalled with the grace period, and the
retention CronJob reads this ConfigMap too. */ -}}
{{- $r := $root.Values.retention -}}
{{- $_ := set $data "ZAPTRIX_LINK_RETENTION_DAYS" ($r.linkRetentionDays | toString) -}}
{{- $_ := set $data "ZAPTRIX_CONVERSATION_IDLE_DAYS" ($r.conversationIdleDays | toString) -}}
{{- $_ := set $data "ZAPTRIX_UNINSTALL_GRACE_DAYS" ($r.uninstallGraceDays | toString) -}}
{{- $_ := set $data "ZAPTRIX_RETENTION_BATCH" ($r.batch | toString) -}}
{{- end -}}
{{- range $k, $v := $c.env -}}
{{- $_ := set $data $k ($v | toString) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* Whether the component serves or calls the internal gRPC with mTLS. (list $root $c) */}}
{{- define "zaptrix.usesGrpcTls" -}}
{{- $c := index . 1 -}}
{{- if and (index . 0).Values.grpcTls.enabled (or (eq $c.kind "grpc") $c.connections.mapper $c.connections.tokenKeeper) -}}true{{- end -}}
{{- end -}}

{{/* Name of the Secret holding a component's gRPC certificate. (list $root $c) */}}
{{- define "zaptrix.grpcTlsSecret" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- index ($root.Values.grpcTls.secretNames | default dict) $c.key | default (printf "%s-grpc-tls" $c.fullname) -}}
{{- end -}}

{{/*
Secrets a component reads from files, as JSON {setting variable: key in the Secret}: its secretFiles, the
Kafka SASL password when SASL is on, and the optional bitrixClientSecret only when it exists.
(list $root $c)
*/}}
{{- define "zaptrix.secretFiles" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $s := $root.Values.secrets -}}
{{- $out := dict -}}
{{- range $var, $keyId := $c.secretFiles -}}
{{- if or (ne $keyId "bitrixClientSecret") $s.hasBitrixClientSecret (and $s.create $s.values.bitrixClientSecret) -}}
{{- $_ := set $out $var (index $s.keys $keyId) -}}
{{- end -}}
{{- end -}}
{{- if and $c.connections.kafka $root.Values.kafka.sasl.enabled -}}
{{- $_ := set $out "ZAPTRIX_KAFKA_SASL_PASSWORD" $s.keys.kafkaSaslPassword -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "zaptrix.configmap" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
data:
  {{- include "zaptrix.configData" (list $root $c) | nindent 2 }}
{{- end -}}

{{- define "zaptrix.serviceaccount" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if $c.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
  {{- with $c.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# No component talks to the Kubernetes API.
automountServiceAccountToken: false
{{- end }}
{{- end -}}

{{/* env entries of a container: non-secret values kept in the Secret (key ids). Secrets are files. */}}
{{- define "zaptrix.secretEnv" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $optional := splitList "\n" (include "zaptrix.optionalSecretKeys" $root) -}}
{{- range $envName, $keyId := $c.secretEnv }}
- name: {{ $envName }}
  valueFrom:
    secretKeyRef:
      name: {{ include "zaptrix.secretName" $root }}
      key: {{ index $root.Values.secrets.keys $keyId }}
      {{- if has $keyId $optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{- define "zaptrix.podSecurity" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml $c.podSecurityContext | nindent 2 }}
{{- with $root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "zaptrix.deployment" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 }}
{{- $files := include "zaptrix.secretFiles" (list $root $c) | fromJson }}
{{- $tls := include "zaptrix.usesGrpcTls" (list $root $c) }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: {{ $c.revisionHistoryLimit }}
  selector:
    matchLabels:
      {{- include "zaptrix.selectorLabels" (list $root $c.name) | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 8 }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "zaptrix.configData" (list $root $c) | sha256sum }}
        {{- if $root.Values.secrets.create }}
        checksum/secret: {{ include "zaptrix.secretData" $root | sha256sum }}
        {{- end }}
        {{- with $c.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ if $c.serviceAccount.create }}{{ $c.fullname }}{{ else }}{{ $c.serviceAccount.name | default "default" }}{{ end }}
      {{- include "zaptrix.podSecurity" (list $root $c) | nindent 6 }}
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
      {{- with $c.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $c.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range $c.topologySpread.topologyKeys }}
        - topologyKey: {{ . }}
          maxSkew: {{ $c.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $c.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "zaptrix.selectorLabels" (list $root $c.name) | nindent 14 }}
          matchLabelKeys: [pod-template-hash]
        {{- end }}
      {{- end }}
      containers:
        - name: {{ $c.name }}
          image: {{ include "zaptrix.image" (list $root $c) }}
          imagePullPolicy: {{ $c.image.pullPolicy | default $root.Values.image.pullPolicy }}
          command:
            {{- toYaml $c.command | nindent 12 }}
          {{- with $c.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            {{- range $name, $port := $c.ports }}
            - name: {{ $name }}
              containerPort: {{ $port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $c.fullname }}
          env:
            - name: K8S_POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: OTEL_RESOURCE_ATTRIBUTES
              value: {{ include "zaptrix.otelResourceAttributes" (list $root) | quote }}
            {{- include "zaptrix.secretEnv" (list $root $c) | nindent 12 }}
          {{- include "zaptrix.probes" $c | trim | nindent 10 }}
          {{- if $c.preStopSleepSeconds }}
          lifecycle:
            preStop:
              exec:
                # Keep serving while the endpoint removal reaches every node, then take SIGTERM.
                command: [sleep, {{ $c.preStopSleepSeconds | quote }}]
          {{- end }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- toYaml $c.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $files }}
            - name: secrets
              mountPath: {{ $root.Values.secrets.secretsMountPath }}
              readOnly: true
            {{- end }}
            {{- if $tls }}
            - name: grpc-tls
              mountPath: {{ $root.Values.grpcTls.mountPath }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $c.tmpSizeLimit }}
        {{- if $files }}
        - name: secrets
          secret:
            secretName: {{ include "zaptrix.secretName" $root }}
            defaultMode: 0400
            items:
              {{- range $var, $key := $files }}
              - {key: {{ $key }}, path: {{ $key }}}
              {{- end }}
        {{- end }}
        {{- if $tls }}
        - name: grpc-tls
          secret:
            secretName: {{ include "zaptrix.grpcTlsSecret" (list $root $c) }}
            defaultMode: 0400
            items:
              - {key: tls.crt, path: tls.crt}
              - {key: tls.key, path: tls.key}
              - {key: ca.crt, path: ca.crt}
        {{- end }}
{{- end -}}

{{- define "zaptrix.service" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "zaptrix.selectorLabels" (list $root $c.name) | nindent 4 }}
  ports:
    {{- range $name, $port := $c.ports }}
    - name: {{ $name }}
      port: {{ $port }}
      targetPort: {{ $name }}
      protocol: TCP
      {{- if or (eq $name "grpc") (eq $name "health") }}
      appProtocol: grpc
      {{- else }}
      appProtocol: http
      {{- end }}
    {{- end }}
{{- end -}}

{{- define "zaptrix.hpa" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if $c.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $c.fullname }}
  minReplicas: {{ $c.autoscaling.minReplicas }}
  maxReplicas: {{ $c.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetCPUUtilizationPercentage }}
    {{- if $c.autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetMemoryUtilizationPercentage }}
    {{- end }}
  {{- with $c.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "zaptrix.pdb" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if $c.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
spec:
  {{- if hasKey $c.pdb "minAvailable" }}
  minAvailable: {{ $c.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $c.pdb.maxUnavailable | default 1 }}
  {{- end }}
  # A pod that never became ready may always be evicted (it serves nothing).
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "zaptrix.selectorLabels" (list $root $c.name) | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
NetworkPolicy of one component. Ingress: web components from the ingress controller on http;
mapper and token-keeper on grpc only from our components that declare the connection; metrics from
the monitoring namespace. Kubelet probes are not subject to NetworkPolicy. Egress: DNS, the gRPC servers
it calls and the dependencies its `connections` declare (PostgreSQL, Kafka, OTLP, public HTTPS).
*/}}
{{- define "zaptrix.networkpolicy" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $np := $root.Values.networkPolicy -}}
{{- if $np.enabled }}
{{- $clients := list -}}
{{- if eq $c.kind "grpc" -}}
{{- range $key, $other := $root.Values.components -}}
{{- if and $other.enabled (index ($other.connections | default dict) $c.key) -}}
{{- $clients = append $clients ($key | kebabcase) -}}
{{- end -}}
{{- end -}}
{{- end }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "zaptrix.selectorLabels" (list $root $c.name) | nindent 6 }}
  policyTypes:
    - Ingress
    {{- if $np.egress.enabled }}
    - Egress
    {{- end }}
  ingress:
    {{- if eq $c.kind "web" }}
    - from:
        - {{- with $np.ingressController.namespaceSelector }}
          namespaceSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          podSelector:
            {{- toYaml ($np.ingressController.podSelector | default dict) | nindent 12 }}
      ports:
        - port: http
          protocol: TCP
    {{- end }}
    {{- if and (eq $c.kind "grpc") $clients }}
    - from:
        - podSelector:
            matchExpressions:
              - key: app.kubernetes.io/instance
                operator: In
                values: [{{ $root.Release.Name | quote }}]
              - key: app.kubernetes.io/name
                operator: In
                values: [{{ include "zaptrix.name" $root | quote }}]
              - key: app.kubernetes.io/component
                operator: In
                values:
                  {{- toYaml $clients | nindent 18 }}
      ports:
        - port: grpc
          protocol: TCP
    {{- end }}
    - from:
        - {{- with $np.metrics.namespaceSelector }}
          namespaceSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          podSelector:
            {{- toYaml ($np.metrics.podSelector | default dict) | nindent 12 }}
      ports:
        - port: {{ ternary "http" "metrics" (eq $c.kind "web") }}
          protocol: TCP
  {{- if $np.egress.enabled }}
  {{- $eg := $np.egress }}
  egress:
    # DNS
    - to:
        {{- toYaml $eg.dns.to | nindent 8 }}
      ports:
        - {port: 53, protocol: UDP}
        - {port: 53, protocol: TCP}
    {{- if or $c.connections.mapper $c.connections.tokenKeeper }}
    # Our gRPC services
    - to:
        - podSelector:
            matchExpressions:
              - key: app.kubernetes.io/instance
                operator: In
                values: [{{ $root.Release.Name | quote }}]
              - key: app.kubernetes.io/name
                operator: In
                values: [{{ include "zaptrix.name" $root | quote }}]
              - key: app.kubernetes.io/component
                operator: In
                values:
                  {{- if $c.connections.mapper }}
                  - mapper
                  {{- end }}
                  {{- if $c.connections.tokenKeeper }}
                  - token-keeper
                  {{- end }}
      ports:
        - port: grpc
          protocol: TCP
    {{- end }}
    {{- if $c.connections.postgres }}
    # PostgreSQL
    - to:
        {{- toYaml $eg.postgres.to | nindent 8 }}
      ports:
        {{- toYaml $eg.postgres.ports | nindent 8 }}
    {{- end }}
    {{- if $c.connections.kafka }}
    # Kafka
    - to:
        {{- toYaml $eg.kafka.to | nindent 8 }}
      ports:
        {{- toYaml $eg.kafka.ports | nindent 8 }}
    {{- end }}
    {{- if $root.Values.tracing.inCluster.enabled }}
    # The in-cluster OpenTelemetry collector (tracing.inCluster)
    - to:
        - podSelector:
            matchLabels:
              {{- include "zaptrix.selectorLabels" (list $root "otel-collector") | nindent 14 }}
      ports:
        - {port: 4317, protocol: TCP}
    {{- else if $root.Values.otel.endpoint }}
    # OpenTelemetry collector
    - to:
        {{- toYaml $eg.otlp.to | nindent 8 }}
      ports:
        {{- toYaml $eg.otlp.ports | nindent 8 }}
    {{- end }}
    {{- if $c.connections.internet }}
    # Meta Graph API, Bitrix24 portals and OAuth: public addresses only
    - to:
        - ipBlock:
            cidr: {{ $eg.internet.cidr }}
            except:
              {{- toYaml $eg.internet.except | nindent 14 }}
      ports:
        {{- toYaml $eg.internet.ports | nindent 8 }}
    {{- end }}
    {{- with $eg.extraRules }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "zaptrix.servicemonitor" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if $root.Values.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $c.fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "zaptrix.componentLabels" (list $root $c.name) | nindent 4 }}
    {{- with $root.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "zaptrix.selectorLabels" (list $root $c.name) | nindent 6 }}
  endpoints:
    - port: {{ ternary "http" "metrics" (eq $c.kind "web") }}
      path: /metrics
      interval: {{ $root.Values.serviceMonitor.interval }}
      scrapeTimeout: {{ $root.Values.serviceMonitor.scrapeTimeout }}
{{- end }}
{{- end -}}

{{/*
The three probes of a component, defined once per kind; a probe given in the component's values replaces
the kind's one. Every probe asks about the pod itself, never a dependency (docs/ARCHITECTURE.md, "Health
and readiness"): a Kafka, PostgreSQL, mapper or token-keeper outage neither restarts pods nor empties a
Service; it shows in /health and zaptrix_dependency_up. startup and liveness: "the process works" (HTTP
/health; gRPC "liveness"). readiness: "this pod can take traffic" (HTTP /ready: web = its Kafka producer
has started, dispatcher = its consumer polls; gRPC "": PostgreSQL answered once since start-up). web and
dispatcher use the http or metrics port; grpc uses grpc.health.v1 on the plaintext health port (the
kubelet has no client certificate).
*/}}
{{- define "zaptrix.probes" -}}
{{- $c := . -}}
{{- $live := dict -}}
{{- $ready := dict -}}
{{- if eq $c.kind "grpc" -}}
{{- $live = dict "grpc" (dict "port" $c.ports.health "service" "liveness") -}}
{{- $ready = dict "grpc" (dict "port" $c.ports.health) -}}
{{- else -}}
{{- $port := ternary "http" "metrics" (eq $c.kind "web") -}}
{{- $live = dict "httpGet" (dict "path" "/health" "port" $port) -}}
{{- $ready = dict "httpGet" (dict "path" "/ready" "port" $port) -}}
{{- end -}}
{{- $probes := dict
  "startupProbe" (merge (deepCopy $live) (dict "periodSeconds" 2 "timeoutSeconds" 3 "failureThreshold" 30))
  "livenessProbe" (merge (deepCopy $live) (dict "periodSeconds" 10 "timeoutSeconds" 3 "failureThreshold" (ternary 6 3 (eq $c.kind "grpc"))))
  "readinessProbe" (merge (deepCopy $ready) (dict "periodSeconds" (ternary 10 5 (eq $c.kind "dispatcher")) "timeoutSeconds" 3 "failureThreshold" (ternary 3 2 (eq $c.kind "dispatcher"))))
-}}
{{- range $name := list "startupProbe" "livenessProbe" "readinessProbe" }}
{{ $name }}:
  {{- toYaml (index $c $name | default (index $probes $name)) | nindent 2 }}
{{- end -}}
{{- end -}}
