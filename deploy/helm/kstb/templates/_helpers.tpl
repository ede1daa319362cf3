{{/* Common labels of every object of one component. */}}
{{- define "kstb.labels" -}}
app.kubernetes.io/name: kstb
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "kstb.selector" -}}
app.kubernetes.io/name: kstb
app.kubernetes.io/instance: {{ .root.Release.Name }}
kstb.io/unit: {{ .name }}
{{- end -}}

{{- define "kstb.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
One daemon: its ConfigMap (the daemon's TOML and the network file), a headless Service (gRPC
and metrics) and a single-replica StatefulSet whose store is a PersistentVolumeClaim.
Arguments (dict): root, name, component, binary, role, grpcPort, metricsPort, keysSecret,
storage, resources, config.
*/}}
{{- define "kstb.daemon" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name }}
  labels:
    {{- include "kstb.labels" . | nindent 4 }}
data:
  network.toml: |
    {{- $v.network | nindent 4 }}
  {{ .component }}.toml: |
    {{- .config | nindent 4 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  labels:
    {{- include "kstb.labels" . | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "kstb.selector" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ .metricsPort }}
      targetPort: metrics
      protocol: TCP
---
{{- if $v.networkPolicy.enabled }}
# SECURITY: /metrics is plain HTTP without authentication and reveals volumes per security,
# feed health and relayer gas balances (docs/operators/deployment-security.md §4): only the
# peers in networkPolicy.metricsFrom (default: pods of this namespace) may reach it. The
# gRPC port is mutual TLS; networkPolicy.grpcFrom narrows it further (default: any source).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .name }}
  labels:
    {{- include "kstb.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "kstb.selector" . | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - ports:
        - port: grpc
          protocol: TCP
      {{- with $v.networkPolicy.grpcFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    - ports:
        - port: metrics
          protocol: TCP
      from:
        {{- toYaml $v.networkPolicy.metricsFrom | nindent 8 }}
---
{{- end }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .name }}
  labels:
    {{- include "kstb.labels" . | nindent 4 }}
spec:
  # SECURITY: exactly one process per store (two-phase commit log, scan checkpoint or vote
  # log); a StatefulSet never runs two pods of one ordinal, even during an update.
  replicas: 1
  serviceName: {{ .name }}
  podManagementPolicy: OrderedReady
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels:
      {{- include "kstb.selector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kstb.labels" . | nindent 8 }}
        kstb.io/unit: {{ .name }}
      annotations:
        checksum/config: {{ printf "%s%s" $v.network .config | sha256sum }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .metricsPort | quote }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "kstb.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            - {{ .binary }}
            - --config
            - /etc/kstb/{{ .component }}.toml
          ports:
            - name: grpc
              containerPort: {{ .grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ .metricsPort }}
              protocol: TCP
          env:
            - name: HOME
              value: /tmp
            # SECURITY: the Secret volume's files are root:<fsGroup> 0440; the daemon accepts
            # a key readable by its own group only with this set (bridge/keys/files.py). The
            # pod runs this one container, so that group is this daemon.
            - name: KSTB_KEYS_READABLE_BY_OWN_POD_GROUP
              value: "1"
          startupProbe:
            tcpSocket:
              port: grpc
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            failureThreshold: {{ $v.probes.startup.failureThreshold }}
          livenessProbe:
            tcpSocket:
              port: grpc
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold }}
          readinessProbe:
            # gRPC health over mutual TLS with the daemon's own identity (bridge health).
            exec:
              command:
                - bridge
                - --client-config
                - /etc/kstb/{{ .component }}.toml
                - --timeout
                - "5"
                - health
                - --target
                - 127.0.0.1:{{ .grpcPort }}
                - --role
                - {{ .role | quote }}
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          securityContext:
            {{- toYaml $v.containerSecurityContext | nindent 12 }}
          {{- with .resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: config
              mountPath: /etc/kstb
              readOnly: true
            # SECURITY: the keys Secret itself, mounted whole (never with subPath): the kubelet
            # swaps in a changed Secret atomically and the daemon re-reads certificates, keys,
            # CA bundles and revocation lists when they change on disk, so a rotation or a
            # revocation reaches the running pod without a restart (ADR 0021 §7).
            - name: keys
              mountPath: /etc/kstb/keys
              readOnly: true
            - name: store
              mountPath: /var/lib/kstb
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: config
          configMap:
            name: {{ .name }}
            defaultMode: 0444
        - name: keys
          secret:
            secretName: {{ .keysSecret }}
            defaultMode: 0440
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
  volumeClaimTemplates:
    - metadata:
        name: store
        labels:
          {{- include "kstb.labels" . | nindent 10 }}
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with .storage.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .storage.size }}
{{- end -}}
