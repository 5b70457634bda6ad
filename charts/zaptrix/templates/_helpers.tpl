{{/*
Names and labels (bitnami naming set). Selector labels are name + instance + component only:
selectors are immutable, so nothing that changes between releases goes into them.
*/}}

{{- define "zaptrix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zaptrix.fullname" -}}
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

{{- define "zaptrix.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource; pass the root context. */}}
{{- define "zaptrix.labels" -}}
helm.sh/chart: {{ include "zaptrix.chart" . }}
app.kubernetes.io/name: {{ include "zaptrix.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zaptrix
{{- end -}}

{{/* (list $root "meta-ingress") */}}
{{- define "zaptrix.componentLabels" -}}
{{ include "zaptrix.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* (list $root "meta-ingress") */}}
{{- define "zaptrix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zaptrix.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* (list $root "meta-ingress"): <fullname>-<component>, at most 63 characters. */}}
{{- define "zaptrix.componentFullname" -}}
{{- printf "%s-%s" (include "zaptrix.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zaptrix.secretName" -}}
{{- if and .Values.secrets.create .Values.secrets.existingSecret -}}
{{- fail "secrets.create and secrets.existingSecret exclude each other" -}}
{{- end -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "zaptrix.fullname" .)) -}}
{{- end -}}

{{/*
The effective configuration of one component: .Values.defaults with the component's values laid over
it. A map-valued block is overlaid key by key (one level), anything else is replaced. Written into the
dict passed last (templates cannot return objects), so numbers keep their type.
(list $root "metaIngress" $componentValues $out)
*/}}
{{- define "zaptrix.componentConfig" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $comp := index . 2 -}}
{{- $out := index . 3 -}}
{{- range $k, $v := $root.Values.defaults -}}
  {{- if and (hasKey $comp $k) (kindIs "map" $v) (kindIs "map" (index $comp $k)) -}}
    {{- $m := deepCopy $v -}}
    {{- range $k2, $v2 := index $comp $k -}}
      {{- $_ := set $m $k2 $v2 -}}
    {{- end -}}
    {{- $_ := set $out $k $m -}}
  {{- else if hasKey $comp $k -}}
    {{- $_ := set $out $k (index $comp $k) -}}
  {{- else -}}
    {{- $_ := set $out $k (deepCopy $v) -}}
  {{- end -}}
{{- end -}}
{{- range $k, $v := $comp -}}
  {{- if not (hasKey $out $k) -}}
    {{- $_ := set $out $k $v -}}
  {{- end -}}
{{- end -}}
{{- $_ := set $out "key" $key -}}
{{- $_ := set $out "name" ($key | kebabcase) -}}
{{- $_ := set $out "fullname" (include "zaptrix.componentFullname" (list $root ($key | kebabcase))) -}}
{{- end -}}

{{/* Image reference of a component config: <registry>/<repository>:<tag>[@<digest>]. (list $root $c) */}}
{{- define "zaptrix.image" -}}
{{- $root := index . 0 -}}
{{- $img := (index . 1).image -}}
{{- $repo := $img.repository -}}
{{- if $root.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $root.Values.image.registry) $img.repository -}}
{{- end -}}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion | toString -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "component %s: the image tag \"latest\" is not allowed; pin a version" (index . 1).name) -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $repo $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* Address of a gRPC component's Service: <name>.<namespace>.svc:<port>. (list $root "mapper") */}}
{{- define "zaptrix.grpcAddr" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $comp := index $root.Values.components $key -}}
{{- printf "%s.%s.svc:%v" (include "zaptrix.componentFullname" (list $root ($key | kebabcase))) $root.Release.Namespace $comp.ports.grpc -}}
{{- end -}}

{{/* Secret key ids whose secretKeyRef is optional (the setting has a default). */}}
{{- define "zaptrix.optionalSecretKeys" -}}
tokenKeeperActiveKeyId
bitrixClientSecret
{{- end -}}

{{/* ZAPTRIX_PUBLIC_BASE_URL: config.publicBaseUrl, else https://<ingress.host> (http without TLS). */}}
{{- define "zaptrix.publicBaseUrl" -}}
{{- if .Values.config.publicBaseUrl -}}
{{- .Values.config.publicBaseUrl | trimSuffix "/" -}}
{{- else if and .Values.ingress.enabled .Values.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.ingress.tls))) .Values.ingress.host -}}
{{- end -}}
{{- end -}}

{{/* The OTEL_RESOURCE_ATTRIBUTES value (k8s.pod.name comes from the K8S_POD_NAME variable). */}}
{{- define "zaptrix.otelResourceAttributes" -}}
{{- $root := index . 0 -}}
{{- $attrs := list "service.namespace=zaptrix" (printf "service.version=%s" $root.Chart.AppVersion) (printf "k8s.namespace.name=%s" $root.Release.Namespace) "k8s.pod.name=$(K8S_POD_NAME)" -}}
{{- range $k, $v := $root.Values.otel.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end -}}

{{/* OTLP/gRPC endpoint of every component: otel.endpoint, else the in-cluster collector when it is enabled. */}}
{{- define "zaptrix.otlpEndpoint" -}}
{{- $in := .Values.tracing.inCluster -}}
{{- if and $in.enabled .Values.otel.endpoint -}}
{{- fail "tracing.inCluster.enabled and otel.endpoint exclude each other: the components export to one place" -}}
{{- end -}}
{{- if .Values.otel.endpoint -}}
{{- .Values.otel.endpoint -}}
{{- else if $in.enabled -}}
{{- printf "http://%s.%s.svc:4317" (include "zaptrix.componentFullname" (list . "otel-collector")) .Release.Namespace -}}
{{- end -}}
{{- end -}}
