{{- define "ope.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ope.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
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
