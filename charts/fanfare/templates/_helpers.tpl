{{/* Names and labels. */}}
{{- define "fanfare.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fanfare.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fanfare.serviceAccountName" -}}
{{- default (include "fanfare.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "fanfare.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* shutdown.grace in whole seconds (accepts 25s, 2m, 500ms). */}}
{{- define "fanfare.graceSeconds" -}}
{{- $g := toString (default "25s" .Values.fanfare.config.shutdown.grace) -}}
{{- if hasSuffix "ms" $g -}}{{ div (trimSuffix "ms" $g | atoi) 1000 | add1 }}
{{- else if hasSuffix "s" $g -}}{{ trimSuffix "s" $g | atoi }}
{{- else if hasSuffix "m" $g -}}{{ mul (trimSuffix "m" $g | atoi) 60 }}
{{- else if hasSuffix "h" $g -}}{{ mul (trimSuffix "h" $g | atoi) 3600 }}
{{- else -}}25{{- end -}}
{{- end -}}

{{/* Kubernetes' grace: preStop + fanfare's grace + 5 s, unless set. */}}
{{- define "fanfare.terminationGrace" -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{ .Values.terminationGracePeriodSeconds }}
{{- else -}}
{{ add (.Values.fanfare.preStopSeconds | int) (include "fanfare.graceSeconds" . | int) 5 }}
{{- end -}}
{{- end -}}

{{/*
fanfare.sidecar: the fanfare container, to include in another chart's pod spec:

  containers:
    - name: my-app
      ...
    {{- include "fanfare.sidecar" . | nindent 4 }}
  volumes:
    {{- include "fanfare.sidecarVolumes" . | nindent 4 }}

It reads .Values.fanfare (the same keys as this chart's values.yaml) and expects a
ConfigMap named "<fullname>-config" holding fanfare.yaml (render it with
"fanfare.configMap"). Set the pod's terminationGracePeriodSeconds with
{{ include "fanfare.terminationGrace" . }}.
*/}}
{{- define "fanfare.sidecar" -}}
- name: fanfare
  image: "{{ .Values.fanfare.image.repository }}:{{ .Values.fanfare.image.tag }}"
  imagePullPolicy: {{ .Values.fanfare.image.pullPolicy }}
  args: ["--config", "/etc/fanfare/fanfare.yaml"]
  ports:
    - name: http
      containerPort: {{ .Values.fanfare.port }}
    - name: admin
      containerPort: {{ .Values.fanfare.adminPort }}
  {{- if or .Values.fanfare.env .Values.fanfare.publishToken.secretName }}
  env:
    {{- with .Values.fanfare.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with .Values.fanfare.publishToken.secretName }}
    - name: FANFARE_PUBLISH_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.Values.fanfare.publishToken.key }}
    {{- end }}
  {{- end }}
  readinessProbe:
    httpGet: { path: /readyz, port: admin }
    periodSeconds: 2
    failureThreshold: 2
  livenessProbe:
    httpGet: { path: /livez, port: admin }
    periodSeconds: 10
    failureThreshold: 3
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.fanfare.preStopSeconds }}
  resources:
    {{- toYaml .Values.fanfare.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: fanfare-config
      mountPath: /etc/fanfare
      readOnly: true
{{- end -}}

{{- define "fanfare.sidecarVolumes" -}}
- name: fanfare-config
  configMap:
    name: {{ include "fanfare.fullname" . }}-config
{{- end -}}

{{- define "fanfare.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "fanfare.fullname" . }}-config
  labels:
    {{- include "fanfare.labels" . | nindent 4 }}
data:
  {{- /* With a publish token Secret, admin.publish_token reads it from the env. */}}
  {{- $config := deepCopy .Values.fanfare.config }}
  {{- /* Addresses follow the ports, so the two cannot disagree. */}}
  {{- $listen := printf "0.0.0.0:%d" (.Values.fanfare.port | int) }}
  {{- $adminListen := printf "0.0.0.0:%d" (.Values.fanfare.adminPort | int) }}
  {{- $upstream := printf "http://127.0.0.1:%d" (.Values.app.port | int) }}
  {{- if and (hasKey $config "listen") (ne (toString $config.listen) $listen) }}
  {{- fail (printf "fanfare.config.listen (%s) disagrees with fanfare.port (%s): leave it out, the chart sets it" (toString $config.listen) $listen) }}
  {{- end }}
  {{- if and (hasKey $config "upstream") (ne (toString $config.upstream) $upstream) }}
  {{- fail (printf "fanfare.config.upstream (%s) disagrees with app.port (%s): leave it out, the chart sets it" (toString $config.upstream) $upstream) }}
  {{- end }}
  {{- $_ := set $config "listen" $listen }}
  {{- $_ := set $config "upstream" $upstream }}
  {{- $admin := default (dict) $config.admin }}
  {{- if and (hasKey $admin "listen") (ne (toString $admin.listen) $adminListen) }}
  {{- fail (printf "fanfare.config.admin.listen (%s) disagrees with fanfare.adminPort (%s): leave it out, the chart sets it" (toString $admin.listen) $adminListen) }}
  {{- end }}
  {{- $_ := set $admin "listen" $adminListen }}
  {{- $_ := set $config "admin" $admin }}
  {{- /* NATS: as configured, else the release's "<release>-nats", unless embedded. */}}
  {{- if not (hasKey $config "nats") }}
  {{- if .Values.nats.embedded }}
  {{- if gt (.Values.replicaCount | int) 1 }}
  {{- fail "nats.embedded: true needs replicaCount: 1 (each pod would have its own broker, and events would reach only that pod's clients)" }}
  {{- end }}
  {{- else }}
  {{- $_ := set $config "nats" (dict "url" (default (printf "nats://%s-nats:4222" .Release.Name) .Values.nats.url)) }}
  {{- end }}
  {{- end }}
  {{- if .Values.fanfare.publishToken.secretName }}
  {{- $_ := set $admin "publish_token" "${FANFARE_PUBLISH_TOKEN}" }}
  {{- end }}
  fanfare.yaml: |
    {{- toYaml $config | nindent 4 }}
{{- end -}}
