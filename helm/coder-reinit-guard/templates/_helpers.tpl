{{/* The chart's name (nameOverride replaces it). */}}
{{- define "guard.name" -}}
{{- default "coder-reinit-guard" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/*
Resource name prefix: fullnameOverride, or the release name (plus the chart name unless already
in it).
*/}}
{{- define "guard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "guard.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "guard.serviceAccountName" -}}
{{- $sa := .Values.reinitGuard.serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "guard.fullname" .) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end }}

{{/* The guard's image: repo@digest when a digest is given, else repo:tag. */}}
{{- define "guard.image" -}}
{{- $i := .Values.reinitGuard.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repo $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repo ($i.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/*
Selector labels. Do not add more selectors: they are immutable on Deployments, and the
"coder" Service of the takeover topology selects exactly these.
*/}}
{{- define "guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "guard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "guard.selectorLabels" . }}
app.kubernetes.io/part-of: coder
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The mode as a word. YAML 1.1 (which Helm parses values with) reads an unquoted `off` as
false: accept that as "off" rather than failing on it.
*/}}
{{- define "guard.mode" -}}
{{- $m := .Values.reinitGuard.mode | toString -}}
{{- if eq $m "false" -}}off{{- else -}}{{ $m }}{{- end -}}
{{- end }}

{{/* Validates the values that must agree with each other; fails with what to set. */}}
{{- define "guard.validate" -}}
{{- $g := .Values.reinitGuard -}}
{{- if not (has $g.topology (list "takeover" "ingress" "gateway")) -}}
{{- fail (printf "reinitGuard.topology %q is not valid: use takeover, ingress or gateway" $g.topology) -}}
{{- end -}}
{{- if not (has (include "guard.mode" .) (list "enforce" "observe" "off")) -}}
{{- fail (printf "reinitGuard.mode %q is not valid: use enforce, observe or off" (include "guard.mode" .)) -}}
{{- end -}}
{{- if eq $g.topology "ingress" -}}
{{- $_ := required "reinitGuard.ingress.host is required with topology ingress: set it to the host of CODER_ACCESS_URL (e.g. coder.example.com)" $g.ingress.host -}}
{{- end -}}
{{- if eq $g.topology "gateway" -}}
{{- if not $g.gateway.parentRefs -}}
{{- fail "reinitGuard.gateway.parentRefs is required with topology gateway: set it to the parentRefs of coder's HTTPRoute (coder.httproute.parentRefs), e.g. [{name: public, namespace: gateway-system}]" -}}
{{- end -}}
{{- if not $g.gateway.hostnames -}}
{{- fail "reinitGuard.gateway.hostnames is required with topology gateway: set it to the host of CODER_ACCESS_URL, as in coder.httproute.host (e.g. [coder.example.com])" -}}
{{- end -}}
{{- end -}}
{{- if $g.tls.enable -}}
{{- $_ := required "reinitGuard.tls.secretName is required when reinitGuard.tls.enable is true: name the kubernetes.io/tls Secret with the certificate" $g.tls.secretName -}}
{{- end -}}
{{- if and $g.db.host (ne (include "guard.mode" .) "off") -}}
{{- $_ := required "reinitGuard.db.existingSecret is required with reinitGuard.db.host: name the Secret holding the database role's password (key reinitGuard.db.passwordKey)" $g.db.existingSecret -}}
{{- $_ := required "reinitGuard.db.user is required with reinitGuard.db.host: set the database role the guard logs in as" $g.db.user -}}
{{- end -}}
{{- if eq $g.topology "takeover" -}}
{{- $_ := required "reinitGuard.coderRelease is required with topology takeover: set it to the coder chart's release name" $g.coderRelease -}}
{{- end -}}
{{- end }}

{{/* The URL the guard forwards to, for the chosen topology. */}}
{{- define "guard.upstreamURL" -}}
{{- $g := .Values.reinitGuard -}}
{{- if eq $g.topology "takeover" -}}
{{ $g.upstream.scheme }}://{{ $g.upstream.serviceName }}.{{ .Release.Namespace }}.svc.cluster.local:{{ $g.upstream.port }}
{{- else if eq $g.topology "gateway" -}}
{{ $g.upstream.scheme }}://{{ $g.gateway.coderServiceName }}.{{ .Release.Namespace }}.svc.cluster.local:{{ $g.gateway.coderServicePort }}
{{- else -}}
{{ $g.upstream.scheme }}://{{ $g.ingress.coderServiceName }}.{{ .Release.Namespace }}.svc.cluster.local:{{ $g.ingress.coderServicePort }}
{{- end -}}
{{- end }}
