{{/* Names and labels shared by every template of the chart. */}}

{{- define "pantau.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name: RELEASE-pantau, or RELEASE when it already contains the chart name. */}}
{{- define "pantau.fullname" -}}
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

{{- define "pantau.operator.fullname" -}}
{{- printf "%s-operator" (include "pantau.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pantau.triton.fullname" -}}
{{- printf "%s-triton" (include "pantau.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pantau.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "pantau.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; `component` is added per object. */}}
{{- define "pantau.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pantau
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels: immutable once installed. Call with (dict "ctx" $ "component" "operator"). */}}
{{- define "pantau.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pantau.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The product image (operator, ingest pods, the model init container, tests). */}}
{{- define "pantau.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "pantau.triton.image" -}}
{{- printf "%s:%s" .Values.triton.image.repository .Values.triton.image.tag -}}
{{- end -}}

{{/* The Triton gRPC address the operator hands to ingest pods. */}}
{{- define "pantau.triton.address" -}}
{{- if .Values.triton.enabled -}}
{{- printf "%s.%s.svc:%d" (include "pantau.triton.fullname" .) .Release.Namespace (int .Values.triton.service.grpcPort) -}}
{{- else -}}
{{- required "triton.address is required when triton.enabled is false" .Values.triton.address -}}
{{- end -}}
{{- end -}}

{{/* "true" when the operator scales the chart's Triton (autoscaling on, no HPA of the chart's). */}}
{{- define "pantau.triton.operatorScales" -}}
{{- if and .Values.triton.enabled .Values.triton.autoscaling.enabled (not .Values.triton.autoscaling.hpa) -}}
true
{{- end -}}
{{- end -}}

{{/* Restricted Pod Security for a container; merges the user's securityContext over it. */}}
{{- define "pantau.containerSecurityContext" -}}
{{- $base := dict "runAsNonRoot" true "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (mergeOverwrite $base (deepCopy (default (dict) .))) -}}
{{- end -}}

{{/* The OTEL_* variables of every pod but its service name, as a JSON object: the operator gets them
in its environment and hands the same to the ingest pods (PANTAU_INGEST_OTEL_ENV). */}}
{{- define "pantau.otelEnv" -}}
{{- $env := dict -}}
{{- with .Values.otel.resourceAttributes -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- $_ := set $env "OTEL_RESOURCE_ATTRIBUTES" (join "," $pairs) -}}
{{- end -}}
{{- with .Values.otel.sampler }}{{ $_ := set $env "OTEL_TRACES_SAMPLER" . }}{{ end -}}
{{- with .Values.otel.samplerArg }}{{ $_ := set $env "OTEL_TRACES_SAMPLER_ARG" . }}{{ end -}}
{{- range $key, $value := .Values.otel.env }}{{ $_ := set $env $key $value }}{{ end -}}
{{- toJson $env -}}
{{- end -}}
