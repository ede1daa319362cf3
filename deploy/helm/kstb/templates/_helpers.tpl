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
      initContainers:
        # The daemons refuse a key readable by group or others; a Secret volume with fsGroup
        # is group-readable, so copy it into a memory-backed volume as owner-only files.
        - name: keys
          image: {{ include "kstb.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          command:
            - /bin/sh
            - -ec
            - |
              umask 077
              for f in /run/kstb/secret/*; do cp -L "$f" /run/kstb/keys/; done
              chmod 0400 /run/kstb/keys/*
          securityContext:
            {{- toYaml $v.containerSecurityContext | nindent 12 }}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {memory: 64Mi}
          volumeMounts:
            - name: secret
              mountPath: /run/kstb/secret
              readOnly: true
            - name: keys
              mountPath: /run/kstb/keys
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
        - name: secret
          secret:
            secretName: {{ .keysSecret }}
            defaultMode: 0400
        - name: keys
          emptyDir:
            medium: Memory
            sizeLimit: 4Mi
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
