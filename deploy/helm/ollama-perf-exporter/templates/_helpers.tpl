{{- define "ope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ope.fullname" -}}
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

{{- define "ope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ope.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* More than one replica: a StatefulSet whose pods split the targets (--shard.index=auto). */ -}}
{{- define "ope.sharded" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end -}}
{{- end -}}

{{- define "ope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ope.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ope.targetsConfigMap" -}}
{{- if .Values.targetsConfigMap.name -}}
{{- .Values.targetsConfigMap.name -}}
{{- else if .Values.targets -}}
{{- printf "%s-targets" (include "ope.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- /* The selector of the exporter's own scrape in the rules (LLMExporterDown, LLMExporterAbsent):
its job label is the Service's app.kubernetes.io/name (the ServiceMonitor's jobLabel). */ -}}
{{- define "ope.exporterSelector" -}}
{{- .Values.prometheusRule.selectors.exporter | default (printf "job=%q" (include "ope.name" .)) -}}
{{- end -}}

{{- define "ope.claimSpec" -}}
accessModes:
  {{- toYaml .Values.results.persistence.accessModes | nindent 2 }}
{{- with .Values.results.persistence.storageClassName }}
storageClassName: {{ . | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .Values.results.persistence.size }}
{{- end -}}
