# shellcheck shell=bash
# Certificates and client configuration of a local control plane, shared by
# hack/control-plane.sh and hack/multi-host.sh. Sourced, never run. The caller defines
# die MESSAGE.

# pki_generate DIR CA_CN [SAN...] : in DIR a CA (CN=CA_CN), kube-apiserver's serving
# certificate (apiserver.{crt,key}, valid for loopback, the in-cluster names, the first
# service IP and every extra SAN such as IP:10.1.2.3), an admin client certificate
# (admin.{crt,key}, system:masters) and a service-account key pair (sa.{key,pub}).
pki_generate() {
  local pki="$1" ca_cn="$2" san
  shift 2
  local sans="IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
  for san in "$@"; do sans+=",${san}"; done
  mkdir -p "${pki}"
  (
    cd "${pki}"
    umask 077
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=${ca_cn}" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    sign() { # sign NAME SUBJECT EXTENSIONS
      openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
      "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=${sans}")"
    sign admin "/O=system:masters/CN=kubekms-admin" "$(printf '%s\n' \
      "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth")"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "generating certificates with openssl failed in ${pki}"
}

# admin_kubeconfig FILE PKI_DIR SERVER_URL CLUSTER : a kubeconfig (mode 600) for the admin
# certificate of PKI_DIR, with the CA and keys inlined, cluster and context named CLUSTER.
admin_kubeconfig() {
  local file="$1" pki="$2" server="$3" cluster="$4"
  b64() { base64 -w0 <"$1"; }
  cat >"${file}" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: ${cluster}
  cluster:
    server: ${server}
    certificate-authority-data: $(b64 "${pki}/ca.crt")
users:
- name: kubekms-admin
  user:
    client-certificate-data: $(b64 "${pki}/admin.crt")
    client-key-data: $(b64 "${pki}/admin.key")
contexts:
- name: ${cluster}
  context:
    cluster: ${cluster}
    user: kubekms-admin
    namespace: default
current-context: ${cluster}
YAML
  chmod 600 "${file}"
}

# kms_encryption_config FILE SOCKET : an EncryptionConfiguration that encrypts Secrets with
# the KMS v2 provider "kubekms" at unix://SOCKET, identity as fallback for reads.
kms_encryption_config() {
  cat >"$1" <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources:
  - secrets
  providers:
  - kms:
      apiVersion: v2
      name: kubekms
      endpoint: unix://$2
      timeout: 3s
  - identity: {}
YAML
}
