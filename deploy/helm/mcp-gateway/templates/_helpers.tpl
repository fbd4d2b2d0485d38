{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "mcp-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "mcp-gateway.fullname" -}}
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

{{- define "mcp-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-gateway.labels" -}}
helm.sh/chart: {{ include "mcp-gateway.chart" . }}
{{ include "mcp-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mcp-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcp-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mcp-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
One TOML value. YAML numbers reach templates as float64, so whole numbers
are printed as integers (the gateway's counters and sizes are integers).
*/}}
{{- define "mcp-gateway.tomlValue" -}}
{{- if kindIs "bool" . }}{{ . }}
{{- else if kindIs "string" . }}{{ toJson . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "mcp-gateway.tomlValue" $v }}{{ end }}]
{{- else }}{{ fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/*
config.toml: values.config with what the chart decides (listen address,
no-auth acknowledgement, mount paths) laid over it.
*/}}
{{- define "mcp-gateway.configToml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $server := get $cfg "server" | default dict }}
{{- $_ := set $server "listen" (printf "%s:%d" .Values.listenAddress (int .Values.containerPort)) }}
{{- $_ := set $server "insecure_no_auth" (.Values.auth.insecureNoAuth | default false) }}
{{- if hasKey $cfg "auth" }}
{{- fail "config.auth is not used: set auth.apiKeys / auth.jwt" }}
{{- end }}
{{- $jwt := .Values.auth.jwt | default dict }}
{{- if not (or .Values.auth.apiKeys $jwt.issuer .Values.auth.insecureNoAuth) }}
{{- fail "the gateway listens on the pod network and needs authentication: set auth.apiKeys or auth.jwt.issuer (or, knowingly, auth.insecureNoAuth=true)" }}
{{- end }}
{{- $_ := set $cfg "server" $server }}
{{- $storage := get $cfg "storage" | default dict }}
{{- $_ := set $storage "data_dir" "/var/lib/mcp-gateway" }}
{{- $_ := set $cfg "storage" $storage }}
{{- $policy := get $cfg "policy" | default dict }}
{{- $_ := set $policy "dir" "/etc/mcp-gateway/policies" }}
{{- $_ := set $cfg "policy" $policy }}
{{- $sandbox := get $cfg "sandbox" | default dict }}
{{- $_ := set $sandbox "profiles_dir" "/etc/mcp-gateway/sandbox-profiles" }}
{{- $_ := set $cfg "sandbox" $sandbox }}
# Rendered by the mcp-gateway Helm chart from values.config and values.auth.
{{- range $section := keys $cfg | sortAlpha }}
{{- $table := get $cfg $section }}
{{- if not (kindIs "map" $table) }}
{{- fail (printf "config.%s must be a table of keys" $section) }}
{{- end }}

[{{ $section }}]
{{- range $key := keys $table | sortAlpha }}
{{ $key }} = {{ include "mcp-gateway.tomlValue" (get $table $key) }}
{{- end }}
{{- end }}
{{- range .Values.auth.apiKeys }}

[[auth.api_keys]]
id = {{ required "auth.apiKeys[].id is required" .id | toJson }}
tenant = {{ required "auth.apiKeys[].tenant is required" .tenant | toJson }}
roles = {{ include "mcp-gateway.tomlValue" (.roles | default list) }}
hash = {{ required "auth.apiKeys[].hash is required" .hash | toJson }}
{{- end }}
{{- if $jwt.issuer }}

[auth.jwt]
issuer = {{ $jwt.issuer | toJson }}
audience = {{ required "auth.jwt.audience is required" $jwt.audience | toJson }}
{{- if $jwt.secretName }}
hs256_secret_env = "MCP_GATEWAY_JWT_HS256_SECRET"
{{- end }}
{{- if $jwt.jwksConfigMap }}
jwks_file = {{ printf "/etc/mcp-gateway/jwks/%s" $jwt.jwksKey | toJson }}
{{- end }}
{{- if not (or $jwt.secretName $jwt.jwksConfigMap) }}
{{- fail "auth.jwt needs secretName (HS256) or jwksConfigMap (RS256/ES256)" }}
{{- end }}
leeway_secs = {{ int $jwt.leewaySecs }}
id_claim = {{ $jwt.idClaim | toJson }}
tenant_claim = {{ $jwt.tenantClaim | toJson }}
roles_claim = {{ $jwt.rolesClaim | toJson }}
{{- end }}
{{- end }}

{{- define "mcp-gateway.policiesConfigMap" -}}
{{- if .Values.policies.existingConfigMap }}{{ .Values.policies.existingConfigMap }}
{{- else if .Values.policies.files }}{{ include "mcp-gateway.fullname" . }}-policies
{{- end }}
{{- end }}

{{- define "mcp-gateway.profilesConfigMap" -}}
{{- if .Values.profiles.existingConfigMap }}{{ .Values.profiles.existingConfigMap }}
{{- else if .Values.profiles.files }}{{ include "mcp-gateway.fullname" . }}-profiles
{{- end }}
{{- end }}
